//! TCP frames for live injection. The layout comes from `duraplane::bpf::frames` (the
//! builder the XDP tests use, so generator and tests agree on encodings); this module
//! fills in what live traffic needs and `BPF_PROG_TEST_RUN` does not: real MACs, a
//! sequence number, an IPv4 id and valid IPv4/TCP checksums (the receiving kernel
//! validates them).

use std::net::IpAddr;

use duraplane::bpf::frames::Frame;
pub use duraplane::bpf::frames::tcp_flags::{ACK, FIN, RST, SYN};

/// TCP option MSS 1460, as a real client's SYN carries.
const MSS_OPTION: [u8; 4] = [2, 4, 0x05, 0xb4];

/// One TCP segment to put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFrame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub flags: u8,
    /// IPv4 identification (ignored for IPv6).
    pub ip_id: u16,
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// The Internet checksum (RFC 1071) of `data`, with `acc` pre-summed (pseudo-header).
pub fn checksum(data: &[u8], acc: u32) -> u16 {
    let mut s = sum16(data, acc);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

const ETH_HLEN: usize = 14;

impl TcpFrame {
    /// Serialise; `None` when source and destination families differ.
    pub fn build(&self) -> Option<Vec<u8>> {
        if self.src.is_ipv4() != self.dst.is_ipv4() {
            return None;
        }
        let mut f = Frame::tcp(self.src, self.sport, self.dst, self.dport, self.flags)
            .tcp_options(&MSS_OPTION)
            .build();
        f[0..6].copy_from_slice(&self.dst_mac);
        f[6..12].copy_from_slice(&self.src_mac);
        let (l3, l4) = if self.src.is_ipv4() {
            (ETH_HLEN, ETH_HLEN + 20)
        } else {
            (ETH_HLEN, ETH_HLEN + 40)
        };
        let tcp_len = f.len() - l4;
        f[l4 + 4..l4 + 8].copy_from_slice(&self.seq.to_be_bytes());
        let ack: u32 = u32::from(self.flags & ACK != 0);
        f[l4 + 8..l4 + 12].copy_from_slice(&ack.to_be_bytes());
        let pseudo = if self.src.is_ipv4() {
            f[l3 + 4..l3 + 6].copy_from_slice(&self.ip_id.to_be_bytes());
            f[l3 + 6] |= 0x40; // DF, as a real stack sends
            f[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
            let c = checksum(&f[l3..l4], 0);
            f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
            sum16(&f[l3 + 12..l3 + 20], 6 + tcp_len as u32)
        } else {
            sum16(&f[l3 + 8..l3 + 40], 6 + tcp_len as u32)
        };
        f[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
        let c = checksum(&f[l4..], pseudo);
        f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(src: &str, dst: &str) -> TcpFrame {
        TcpFrame {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport: 40000,
            dport: 25,
            seq: 0x01020304,
            flags: SYN,
            ip_id: 7,
        }
    }

    #[test]
    fn ipv4_checksums_verify() {
        let f = frame("198.51.100.7", "192.0.2.1").build().unwrap();
        assert_eq!(f.len(), 14 + 20 + 24);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        // A correct header sums to 0 (complemented).
        assert_eq!(checksum(&f[14..34], 0), 0);
        let tcp = &f[34..];
        let pseudo = sum16(&f[26..34], 6 + tcp.len() as u32);
        assert_eq!(checksum(tcp, pseudo), 0);
        assert_eq!(tcp[13], SYN);
        assert_eq!(&tcp[4..8], &[1, 2, 3, 4]);
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 2]);
        assert_eq!(&f[6..12], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&f[18..20], &[0, 7]);
        assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 25);
    }

    #[test]
    fn ipv6_checksum_verifies() {
        let f = frame("2001:db8:1::7", "2001:db8::1").build().unwrap();
        assert_eq!(f.len(), 14 + 40 + 24);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        let tcp = &f[54..];
        let pseudo = sum16(&f[22..54], 6 + tcp.len() as u32);
        assert_eq!(checksum(tcp, pseudo), 0);
        assert!(frame("2001:db8::1", "192.0.2.1").build().is_none());
    }

    #[test]
    fn known_checksum_vector() {
        // RFC 1071 example bytes.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0),
            !0xddf2
        );
    }
}
