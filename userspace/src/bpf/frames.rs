//! Ethernet frames for `BPF_PROG_TEST_RUN`: tests, benches, the traffic generator and the
//! daemon's own flow expiry (a synthetic RST) build their packets here, so every user
//! exercises the same encodings the XDP parser has to handle.
//!
//! Checksums are left zero: XDP runs before any checksum validation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// TCP flag bits (byte 13 of the header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Source MAC of built frames (locally administered).
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Destination MAC of built frames (locally administered).
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// An IPv6 extension header placed between the fixed header and the transport header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Ext {
    /// Hop-by-hop options, 8 bytes (PadN).
    HopByHop,
    /// Destination options, 8 bytes (PadN).
    DestOpts,
    /// Routing header type 0 with no addresses, 8 bytes.
    Routing,
    /// Fragment header; `offset` in 8-byte units.
    Fragment { offset: u16, more: bool },
}

impl Ipv6Ext {
    fn proto(self) -> u8 {
        match self {
            Ipv6Ext::HopByHop => 0,
            Ipv6Ext::Routing => 43,
            Ipv6Ext::Fragment { .. } => 44,
            Ipv6Ext::DestOpts => 60,
        }
    }
}

/// Transport payload of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP echo request (ICMPv6 for IPv6 frames).
    IcmpEcho,
}

/// A frame description; [`Frame::build`] serialises it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub transport: Transport,
    /// IPv4 options (padded to a multiple of 4 with EOL); ignored for IPv6.
    pub ipv4_options: Vec<u8>,
    /// IPv4 fragment offset (8-byte units) and more-fragments flag; ignored for IPv6.
    pub ipv4_fragment: (u16, bool),
    /// IPv6 extension headers, in order; ignored for IPv4.
    pub ipv6_ext: Vec<Ipv6Ext>,
    /// TCP options (padded to a multiple of 4 with NOP).
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A TCP segment from `src:sport` to `dst:dport` with `flags` ([`tcp_flags`]).
    /// Both addresses must be of the same family.
    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Self {
        Self::new(
            src,
            dst,
            Transport::Tcp {
                sport,
                dport,
                flags,
            },
        )
    }

    /// A UDP datagram.
    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        Self::new(src, dst, Transport::Udp { sport, dport })
    }

    /// An ICMP (or ICMPv6) echo request.
    pub fn icmp_echo(src: IpAddr, dst: IpAddr) -> Self {
        Self::new(src, dst, Transport::IcmpEcho)
    }

    fn new(src: IpAddr, dst: IpAddr, transport: Transport) -> Self {
        Self {
            vlan: None,
            src,
            dst,
            transport,
            ipv4_options: Vec::new(),
            ipv4_fragment: (0, false),
            ipv6_ext: Vec::new(),
            tcp_options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// Adds one 802.1Q tag.
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlan = Some(id);
        self
    }

    /// IPv4 options (raw bytes).
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        self.ipv4_options = options.to_vec();
        self
    }

    /// Marks the IPv4 packet as a fragment.
    pub fn ipv4_fragment(mut self, offset: u16, more: bool) -> Self {
        self.ipv4_fragment = (offset, more);
        self
    }

    /// Appends an IPv6 extension header.
    pub fn ipv6_ext(mut self, ext: Ipv6Ext) -> Self {
        self.ipv6_ext.push(ext);
        self
    }

    /// TCP options (raw bytes).
    pub fn tcp_options(mut self, options: &[u8]) -> Self {
        self.tcp_options = options.to_vec();
        self
    }

    /// Transport payload.
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Length of all headers (Ethernet up to the end of the transport header), i.e. the
    /// shortest frame the XDP parser can fully classify.
    pub fn header_len(&self) -> usize {
        self.build().len() - self.payload.len()
    }

    /// Serialises the frame.
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128 + self.payload.len());
        f.extend_from_slice(&DST_MAC);
        f.extend_from_slice(&SRC_MAC);
        if let Some(id) = self.vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&(id & 0x0fff).to_be_bytes());
        }
        let l4 = self.l4_bytes();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                self.ipv4(&mut f, s, d, l4.len());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86DDu16.to_be_bytes());
                self.ipv6(&mut f, s, d, l4.len());
            }
            // Mixed families: encode the destination as the source's family so the frame
            // is at least well-formed.
            (IpAddr::V4(s), IpAddr::V6(_)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                self.ipv4(&mut f, s, Ipv4Addr::UNSPECIFIED, l4.len());
            }
            (IpAddr::V6(s), IpAddr::V4(_)) => {
                f.extend_from_slice(&0x86DDu16.to_be_bytes());
                self.ipv6(&mut f, s, Ipv6Addr::UNSPECIFIED, l4.len());
            }
        }
        f.extend_from_slice(&l4);
        f
    }

    fn l4_proto(&self, v6: bool) -> u8 {
        match self.transport {
            Transport::Tcp { .. } => 6,
            Transport::Udp { .. } => 17,
            Transport::IcmpEcho if v6 => 58,
            Transport::IcmpEcho => 1,
        }
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self.transport {
            Transport::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut opts = self.tcp_options.clone();
                while !opts.len().is_multiple_of(4) {
                    opts.push(1); // NOP
                }
                let doff = ((20 + opts.len()) / 4) as u8;
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&1u32.to_be_bytes()); // seq
                b.extend_from_slice(&0u32.to_be_bytes()); // ack
                b.push(doff << 4);
                b.push(flags);
                b.extend_from_slice(&65535u16.to_be_bytes()); // window
                b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
                b.extend_from_slice(&opts);
            }
            Transport::Udp { sport, dport } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                b.extend_from_slice(&[0, 0]);
            }
            Transport::IcmpEcho => {
                let ty = if self.src.is_ipv6() { 128 } else { 8 };
                b.extend_from_slice(&[ty, 0, 0, 0, 0, 1, 0, 1]);
            }
        }
        b.extend_from_slice(&self.payload);
        b
    }

    fn ipv4(&self, f: &mut Vec<u8>, s: Ipv4Addr, d: Ipv4Addr, l4_len: usize) {
        let mut opts = self.ipv4_options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0); // EOL
        }
        let hlen = 20 + opts.len();
        let (offset, more) = self.ipv4_fragment;
        let frag = (offset & 0x1fff) | if more { 0x2000 } else { 0 };
        f.push(0x40 | (hlen / 4) as u8);
        f.push(0);
        f.extend_from_slice(&((hlen + l4_len) as u16).to_be_bytes());
        f.extend_from_slice(&0x1234u16.to_be_bytes()); // id
        f.extend_from_slice(&frag.to_be_bytes());
        f.push(64);
        f.push(self.l4_proto(false));
        f.extend_from_slice(&[0, 0]); // checksum
        f.extend_from_slice(&s.octets());
        f.extend_from_slice(&d.octets());
        f.extend_from_slice(&opts);
    }

    fn ipv6(&self, f: &mut Vec<u8>, s: Ipv6Addr, d: Ipv6Addr, l4_len: usize) {
        let ext_len = 8 * self.ipv6_ext.len();
        let first = self
            .ipv6_ext
            .first()
            .map_or(self.l4_proto(true), |e| e.proto());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((ext_len + l4_len) as u16).to_be_bytes());
        f.push(first);
        f.push(64);
        f.extend_from_slice(&s.octets());
        f.extend_from_slice(&d.octets());
        for (i, e) in self.ipv6_ext.iter().enumerate() {
            let next = self
                .ipv6_ext
                .get(i + 1)
                .map_or(self.l4_proto(true), |n| n.proto());
            match *e {
                Ipv6Ext::HopByHop | Ipv6Ext::DestOpts => {
                    f.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                }
                Ipv6Ext::Routing => f.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 0]),
                Ipv6Ext::Fragment { offset, more } => {
                    let fo = (offset << 3) | u16::from(more);
                    f.push(next);
                    f.push(0);
                    f.extend_from_slice(&fo.to_be_bytes());
                    f.extend_from_slice(&0xabcdu32.to_be_bytes());
                }
            }
        }
    }
}

/// An ARP request ("who has `target`, tell `sender`"), broadcast.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// Ethernet broadcast.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// An Ethernet/IPv4 ARP packet (`op` 1 = request, 2 = reply) from `eth_src` to `eth_dst`.
#[allow(clippy::too_many_arguments)]
pub fn arp(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa.octets());
    f
}

/// Gratuitous ARP for `ip` at `mac`, broadcast: the request form (RFC 5227 announcement:
/// sender = target = `ip`, target hardware zero) or the reply form (target hardware =
/// `mac`). Some hosts and switches accept only one form, so announcers send both.
pub fn gratuitous_arp(ip: Ipv4Addr, mac: [u8; 6], reply: bool) -> Vec<u8> {
    if reply {
        arp(BROADCAST, mac, 2, mac, ip, mac, ip)
    } else {
        arp(BROADCAST, mac, 1, mac, ip, [0; 6], ip)
    }
}

/// Inserts one 802.1Q tag (VLAN `id`) after the MAC addresses of an Ethernet frame.
pub fn with_vlan(frame: &[u8], id: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(frame.len() + 4);
    f.extend_from_slice(&frame[..12.min(frame.len())]);
    f.extend_from_slice(&0x8100u16.to_be_bytes());
    f.extend_from_slice(&(id & 0x0fff).to_be_bytes());
    f.extend_from_slice(&frame[12.min(frame.len())..]);
    f
}

/// The ICMPv6 checksum of `msg` (its checksum field zero or not: it is skipped) between
/// `src` and `dst` (RFC 4443 2.3, pseudo-header of RFC 8200 8.1).
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
            sum += u64::from(w);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    let mut m = msg.to_vec();
    if m.len() >= 4 {
        m[2] = 0;
        m[3] = 0;
    }
    add(&m);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The multicast MAC of an IPv6 multicast address (RFC 2464 7).
pub fn ipv6_multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The solicited-node multicast group of `addr` (ff02::1:ffXX:XXXX).
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

/// An Ethernet + IPv6 (hop limit 255) + ICMPv6 frame with a correct checksum.
pub fn icmpv6_frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    msg: &[u8],
) -> Vec<u8> {
    let mut m = msg.to_vec();
    if m.len() >= 4 {
        let c = icmpv6_checksum(src, dst, &m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
    }
    let mut f = Vec::with_capacity(54 + m.len());
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&0x86DDu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(m.len() as u16).to_be_bytes());
    f.push(58);
    f.push(255);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&m);
    f
}

/// A neighbour solicitation from `src` (`src_mac`) for `target`, to its solicited-node
/// group; with the source link-layer address option when `slla`.
pub fn neighbour_solicitation(
    src: Ipv6Addr,
    src_mac: [u8; 6],
    target: Ipv6Addr,
    slla: bool,
) -> Vec<u8> {
    let group = solicited_node(target);
    let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    if slla {
        m.extend_from_slice(&[1, 1]);
        m.extend_from_slice(&src_mac);
    }
    icmpv6_frame(ipv6_multicast_mac(group), src_mac, src, group, &m)
}

/// NA flag: the sender is a router.
pub const NA_ROUTER: u8 = 0x80;
/// NA flag: answer to a solicitation.
pub const NA_SOLICITED: u8 = 0x40;
/// NA flag: override existing cache entries.
pub const NA_OVERRIDE: u8 = 0x20;

/// An unsolicited neighbour advertisement (override, not solicited) of `target` at `mac`
/// to all nodes (ff02::1), with the target link-layer address option.
pub fn unsolicited_na(target: Ipv6Addr, mac: [u8; 6]) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut m = vec![136, 0, 0, 0, NA_OVERRIDE, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(&[2, 1]);
    m.extend_from_slice(&mac);
    icmpv6_frame(ipv6_multicast_mac(all_nodes), mac, target, all_nodes, &m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));

    #[test]
    fn ipv4_tcp_layout() {
        let f = Frame::tcp(A, 40000, B, 25, tcp_flags::SYN).build();
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14], 0x45);
        assert_eq!(f[14 + 9], 6);
        assert_eq!(&f[26..30], &[192, 0, 2, 1]);
        assert_eq!(&f[34..36], &40000u16.to_be_bytes());
        assert_eq!(&f[36..38], &25u16.to_be_bytes());
        assert_eq!(f[34 + 13], tcp_flags::SYN);
    }

    #[test]
    fn vlan_options_and_fragments() {
        let f = Frame::tcp(A, 1, B, 25, 0)
            .vlan(7)
            .ipv4_options(&[1, 1, 1])
            .ipv4_fragment(3, true)
            .build();
        assert_eq!(&f[12..16], &[0x81, 0x00, 0x00, 0x07]);
        assert_eq!(f[18], 0x46);
        assert_eq!(&f[24..26], &0x2003u16.to_be_bytes());
        assert_eq!(f.len(), 18 + 24 + 20);
    }

    #[test]
    fn ipv6_ext_chain() {
        let s: IpAddr = "2001:db8::1".parse().unwrap();
        let d: IpAddr = "2001:db8::2".parse().unwrap();
        let fr = Frame::tcp(s, 1, d, 25, 0)
            .ipv6_ext(Ipv6Ext::HopByHop)
            .ipv6_ext(Ipv6Ext::Fragment {
                offset: 0,
                more: true,
            });
        let f = fr.build();
        assert_eq!(f[14 + 6], 0); // first next header: hop-by-hop
        assert_eq!(f[54], 44); // hop-by-hop → fragment
        assert_eq!(f[62], 6); // fragment → TCP
        assert_eq!(&f[64..66], &[0, 1]);
        assert_eq!(fr.header_len(), 14 + 40 + 16 + 20);
    }

    #[test]
    fn icmpv6_checksum_verifies() {
        let t: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let f = unsolicited_na(t, [2, 0, 0, 0, 0, 9]);
        assert_eq!(f.len(), 14 + 40 + 32);
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&f[22..38]).unwrap());
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap());
        let msg = &f[54..];
        // The stored checksum equals a fresh computation, and a flipped bit breaks it.
        assert_eq!(
            icmpv6_checksum(src, dst, msg),
            u16::from_be_bytes([msg[2], msg[3]])
        );
        let mut bad = msg.to_vec();
        bad[10] ^= 1;
        assert_ne!(
            icmpv6_checksum(src, dst, &bad),
            u16::from_be_bytes([msg[2], msg[3]])
        );
        assert_eq!(
            solicited_node(t),
            "ff02::1:ff00:7".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn gratuitous_arp_forms() {
        let ip = Ipv4Addr::new(192, 0, 2, 9);
        let mac = [2, 0, 0, 0, 0, 9];
        let rq = gratuitous_arp(ip, mac, false);
        let rp = gratuitous_arp(ip, mac, true);
        assert_eq!(rq.len(), 42);
        assert_eq!(&rq[20..22], &[0, 1]);
        assert_eq!(&rp[20..22], &[0, 2]);
        assert_eq!(&rq[28..32], &ip.octets());
        assert_eq!(&rq[38..42], &ip.octets());
        assert_eq!(&rq[32..38], &[0; 6]);
        assert_eq!(&rp[32..38], &mac);
        assert_eq!(&with_vlan(&rq, 5)[12..16], &[0x81, 0, 0, 5]);
    }
}
