//! TCP frames for live injection: Ethernet II, IPv4 (no options) or IPv6 (no extension
//! headers), TCP with an MSS option, all checksums filled in.

use std::net::IpAddr;

/// TCP flag bits.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

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

impl TcpFrame {
    /// Serialise; `None` when source and destination families differ.
    pub fn build(&self) -> Option<Vec<u8>> {
        let mut tcp = Vec::with_capacity(24);
        tcp.extend_from_slice(&self.sport.to_be_bytes());
        tcp.extend_from_slice(&self.dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        let ack: u32 = if self.flags & ACK != 0 { 1 } else { 0 };
        tcp.extend_from_slice(&ack.to_be_bytes());
        tcp.push(6 << 4); // data offset: 24 bytes
        tcp.push(self.flags);
        tcp.extend_from_slice(&64240u16.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
        tcp.extend_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
        let mut f = Vec::with_capacity(14 + 40 + tcp.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let total = (20 + tcp.len()) as u16;
                let mut ip = [0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                ip[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
                ip[6] = 0x40; // DF
                ip[8] = 64;
                ip[9] = 6;
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                let c = checksum(&ip, 0);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                let pseudo = sum16(&s.octets(), sum16(&d.octets(), 6 + tcp.len() as u32));
                let c = checksum(&tcp, pseudo);
                tcp[16..18].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut ip = [0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&(tcp.len() as u16).to_be_bytes());
                ip[6] = 6;
                ip[7] = 64;
                ip[8..24].copy_from_slice(&s.octets());
                ip[24..40].copy_from_slice(&d.octets());
                let pseudo = sum16(&s.octets(), sum16(&d.octets(), 6 + tcp.len() as u32));
                let c = checksum(&tcp, pseudo);
                tcp[16..18].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&ip);
            }
            _ => return None,
        }
        f.extend_from_slice(&tcp);
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
