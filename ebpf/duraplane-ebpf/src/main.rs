//! Duraplane's eBPF programs.
//!
//! `xdp_ingress` — inbound connection accounting per policy netblock (DESIGN.md "eBPF data
//! plane"). The layouts of every map key/value are in `duraplane-common`.
//!
//! Fast path: Ethernet (+ one 802.1Q tag), IPv4/IPv6 and the TCP flags are read with word
//! loads and no copies; a TCP segment without FIN, RST or a bare SYN (ACKs, data, SYN+ACK)
//! is passed right there, with no map access at all. Everything else takes the slow path:
//! one per-CPU STATS lookup (verifier-inlined), the port bitmap, and — only for SYN/FIN/RST
//! to a counted port — the addresses and the flow and source tables (set-associative ARRAYs
//! with compare-and-swap slots: no kernel hash map, LRU, LPM walk or time helper on the
//! path of a SYN from a known source). No byte-wise zeroing or copying:
//! keys are built field by field from word loads (check with `bpftool prog dump xlated`:
//! no calls to `memset`/`memcpy` subprograms).
//!
//! ARP requests and IPv6 neighbour solicitations for a VIP in `VIPS` are answered in place
//! (XDP_TX) while the daemon's `LEASE` is fresh, and dropped while it is stale (so a hung
//! daemon's node stops claiming them although the kernel still has them plumbed). They are recognised only where the parser
//! already branches (the non-IP ethertype branch; the IPv6 non-TCP branch), so TCP pays
//! nothing for them.
//!
//! `xdp_pass` — `return XDP_PASS`: the baseline the benches measure `xdp_ingress` against.
//!
//! `xdp_announce` — `return XDP_TX`: userspace runs it with `BPF_F_TEST_XDP_LIVE_FRAMES` to
//! transmit gratuitous ARP / unsolicited NA frames at the NIC.
//!
//! `tc_egress` — counts outbound connections per destination (`outbound_cidr`); never drops.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Rust's BPF target declares no compare-and-swap, so `AtomicU64` has no RMW methods there;
// the intrinsics lower to BPF atomic add, cmpxchg and xchg (RUSTC_BOOTSTRAP is set by
// build.rs; cmpxchg/xchg need kernel 5.12).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod programs {
    use core::{
        intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd, atomic_xchg},
        mem::MaybeUninit,
    };

    use aya_ebpf::{
        bindings::{BPF_NOEXIST, TC_ACT_OK, xdp_action},
        helpers::{bpf_ktime_get_coarse_ns, bpf_xdp_adjust_tail},
        macros::{classifier, map, xdp},
        maps::{Array, HashMap, LpmTrie, LruPerCpuHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
        programs::{TcContext, XdpContext},
    };
    use duraplane_common::{
        ACTION_DROP, AF_INET, AF_INET6, DESTINATIONS_MAX_ENTRIES, DROP_EVENTS_BYTES, DropEvent,
        EXPIRE_MAGIC, ExpireMeta, FLOWS_MAX_ENTRIES, FlowKeyV4, FlowKeyV6, FlowSetV4, FlowSetV6,
        FlowSlotV4, FlowSlotV6, FlowValue, Lease, MAX_NETBLOCKS, NETBLOCK_PREFIXES_MAX_ENTRIES,
        NO_SOURCE, NetblockLimit, NetblockStats, OUT_FLOWS_MAX_ENTRIES, PortSet, Runtime,
        SOURCE_CURRENT_MASK, SOURCE_PENDING, SOURCES_MAX_ENTRIES, SourceCounts, SourceKey,
        SourceSet, SourceSlot, Stat, StatsBlock, VIPS_MAX_ENTRIES, VipKey, VipValue, WAYS,
    };

    // Map definitions. Sizes are the defaults of duraplane-common; userspace may override
    // FLOWS_*/SOURCES before load. Minimum kernels: ARRAY/HASH 3.19, PERCPU_ARRAY 4.6,
    // LPM_TRIE 4.11, LRU_PERCPU_HASH 4.10, RINGBUF 5.8, bpf_ktime_get_coarse_ns 5.11, and
    // 5.12 for the atomic compare-and-swap / exchange the flow and source tables use.
    //
    // Why the inbound tables are ARRAYs and not hash maps: measured with BPF_PROG_TEST_RUN
    // (repeat=1, over the parse alone) a HASH insert+delete costs ~240 ns, an LRU_PERCPU_HASH
    // hit ~46 ns, an LPM lookup ~29 ns and a `bpf_ktime_get_coarse_ns` call ~28 ns, while an
    // inlined ARRAY lookup plus a compare-and-swap costs ~3 ns.

    /// Open IPv4 connections: a set-associative table (`WAYS` slots per set, set chosen by
    /// a seeded hash of the 4-tuple), a slot claimed by compare-and-swap. Never evicts: a
    /// SYN whose set is full passes uncounted and `flow_map_full` counts it.
    #[map]
    static FLOWS_V4: Array<FlowSetV4> = Array::with_max_entries(FLOWS_MAX_ENTRIES / WAYS as u32, 0);

    /// Open IPv6 connections (as FLOWS_V4).
    #[map]
    static FLOWS_V6: Array<FlowSetV6> = Array::with_max_entries(FLOWS_MAX_ENTRIES / WAYS as u32, 0);

    /// Per-source open connections (exact: changed only by compare-and-swap / atomic add),
    /// cumulative opened/closed, and the source's cached netblock. Each source has two
    /// candidate sets; only slots without open connections are re-used (an active source is
    /// never evicted); a source finding no slot is counted as `source_map_insert_failed`.
    #[map]
    static SOURCES: Array<SourceSet> =
        Array::with_max_entries(SOURCES_MAX_ENTRIES / WAYS as u32, 0);

    /// Clock, hash seed, netblock generation and table geometry (written by userspace).
    #[map]
    static RUNTIME: Array<Runtime> = Array::with_max_entries(1, 0);

    /// Source IPv4 prefix → policy netblock id (longest match).
    #[map]
    static NETBLOCKS_V4: LpmTrie<[u8; 4], u32> =
        LpmTrie::with_max_entries(NETBLOCK_PREFIXES_MAX_ENTRIES, 0);

    /// Source IPv6 prefix → policy netblock id (longest match).
    #[map]
    static NETBLOCKS_V6: LpmTrie<[u8; 16], u32> =
        LpmTrie::with_max_entries(NETBLOCK_PREFIXES_MAX_ENTRIES, 0);

    /// Netblock id → limit and action (filled by userspace).
    #[map]
    static LIMITS: Array<NetblockLimit> = Array::with_max_entries(MAX_NETBLOCKS, 0);

    /// Netblock id → current connections on this node. Shared (not per-CPU) and updated
    /// with atomic adds so the limit check sees every CPU's opens at once.
    #[map]
    static LOCAL: Array<u64> = Array::with_max_entries(MAX_NETBLOCKS, 0);

    /// Netblock id → current connections on the other nodes (written by replication).
    #[map]
    static REMOTE: Array<u64> = Array::with_max_entries(MAX_NETBLOCKS, 0);

    /// Netblock id → per-CPU event counters.
    #[map]
    static NB_STATS: PerCpuArray<NetblockStats> = PerCpuArray::with_max_entries(MAX_NETBLOCKS, 0);

    /// Global counters, one block per CPU.
    #[map]
    static STATS: PerCpuArray<StatsBlock> = PerCpuArray::with_max_entries(1, 0);

    /// Counted destination ports (one bitmap).
    #[map]
    static PORTS: Array<PortSet> = Array::with_max_entries(1, 0);

    /// Dropped SYNs for the rejectlog.
    #[map]
    static DROP_EVENTS: RingBuf = RingBuf::with_byte_size(DROP_EVENTS_BYTES, 0);

    /// VIPs whose ARP/NS this node answers (HASH, 3.19; 4096 × 32 B keys+values ≈ 200 KiB
    /// with hash overhead). Filled by the daemon with the VIPs it owns.
    #[map]
    static VIPS: HashMap<VipKey, VipValue> = HashMap::with_max_entries(VIPS_MAX_ENTRIES, 0);

    /// The daemon's liveness lease (ARRAY, one 16-byte entry, 3.19): answers stop by
    /// themselves when the daemon stops renewing it (hung or dead daemon ⇒ no stale claims).
    #[map]
    static LEASE: Array<Lease> = Array::with_max_entries(1, 0);

    /// Open outbound IPv4 connections, keyed as sent (local saddr/sport, remote
    /// daddr/dport); HASH (3.19), 65,536 × 28 B. Plain hash so a flow is never evicted.
    #[map]
    static OUT_FLOWS_V4: HashMap<FlowKeyV4, FlowValue> =
        HashMap::with_max_entries(OUT_FLOWS_MAX_ENTRIES, 0);

    /// Open outbound IPv6 connections (as OUT_FLOWS_V4), 65,536 × 52 B.
    #[map]
    static OUT_FLOWS_V6: HashMap<FlowKeyV6, FlowValue> =
        HashMap::with_max_entries(OUT_FLOWS_MAX_ENTRIES, 0);

    /// Per-destination opened/closed, per CPU (LRU_PERCPU_HASH, 4.10; 65,536 × 16 B per
    /// CPU). An evicted destination's close is counted as `dest_evicted`.
    #[map]
    static DESTINATIONS: LruPerCpuHashMap<SourceKey, SourceCounts> =
        LruPerCpuHashMap::with_max_entries(DESTINATIONS_MAX_ENTRIES, 0);

    const ETH_HLEN: usize = 14;
    /// Ethertypes as a native (little-endian) load of the wire bytes sees them.
    const ETH_P_IP_RAW: u16 = 0x0800u16.to_be();
    const ETH_P_IPV6_RAW: u16 = 0x86DDu16.to_be();
    const ETH_P_8021Q_RAW: u16 = 0x8100u16.to_be();
    const ETH_P_ARP_RAW: u16 = 0x0806u16.to_be();
    const IPPROTO_TCP: u8 = 6;
    const IPPROTO_ICMPV6: u8 = 58;
    /// ARP over Ethernet/IPv4, as native loads see the wire: htype 1, ptype 0x0800, then
    /// hlen 6, plen 4, oper 1 (request).
    const ARP_HDR_RAW: u32 = u32::from_ne_bytes([0, 1, 0x08, 0]);
    const ARP_REQUEST_RAW: u32 = u32::from_ne_bytes([6, 4, 0, 1]);
    const ARP_REPLY_OPER_RAW: u16 = 2u16.to_be();
    const ARP_HLEN: usize = 28;
    const ND_NS: u8 = 135;
    const ND_NA: u8 = 136;
    /// ICMPv6 NA length: 24-byte header + target link-layer address option (8 bytes).
    const NA_LEN: usize = 32;
    /// NA flags: solicited | override (not a router).
    const NA_FLAGS_RAW: u32 = u32::from_ne_bytes([0x60, 0, 0, 0]);
    const IPV6_HOPOPTS: u8 = 0;
    const IPV6_ROUTING: u8 = 43;
    const IPV6_FRAGMENT: u8 = 44;
    const IPV6_DSTOPTS: u8 = 60;
    const TCP_FIN: u8 = 0x01;
    const TCP_SYN: u8 = 0x02;
    const TCP_RST: u8 = 0x04;
    const TCP_ACK: u8 = 0x10;
    const TCP_HLEN: usize = 20;
    const EEXIST: i32 = 17;
    const E2BIG: i32 = 7;
    /// `bpf_ringbuf_query` flag: bytes not yet consumed.
    const BPF_RB_AVAIL_DATA: u64 = 0;
    /// Ring buffer space one drop event takes: 8-byte record header + the event.
    const DROP_RECORD_BYTES: u64 = 8 + size_of::<DropEvent>() as u64;

    type Stats = *mut StatsBlock;

    #[inline(always)]
    fn bump(stats: Stats, s: Stat) {
        // SAFETY: `stats` is this CPU's STATS value; `s` < STAT_COUNT by construction.
        unsafe { (*stats).counters[s as usize] += 1 };
    }

    /// `data + off`, if `len` bytes from there are inside the packet. The explicit
    /// `data + off + len <= data_end` comparison is what the verifier needs to see.
    #[inline(always)]
    fn ptr_at(data: usize, end: usize, off: usize, len: usize) -> Option<usize> {
        if data + off + len > end {
            return None;
        }
        Some(data + off)
    }

    #[inline(always)]
    fn load_u8(p: usize) -> u8 {
        // SAFETY: bounds were checked by the caller (`ptr_at`).
        unsafe { *(p as *const u8) }
    }

    /// A 16-bit field in wire order, as a native load sees it (one instruction: the
    /// object is built with misaligned accesses allowed, see build.rs).
    #[inline(always)]
    fn load_raw16(p: usize) -> u16 {
        // SAFETY: bounds were checked by the caller; unaligned read of 2 bytes.
        unsafe { core::ptr::read_unaligned(p as *const u16) }
    }

    #[inline(always)]
    fn load_be16(p: usize) -> u16 {
        u16::from_be(load_raw16(p))
    }

    #[inline(always)]
    fn load_raw32(p: usize) -> u32 {
        // SAFETY: bounds were checked by the caller; unaligned read of 4 bytes.
        unsafe { core::ptr::read_unaligned(p as *const u32) }
    }

    /// Copies 16 packet bytes at `src` to 4-aligned `dst` as four word loads and stores
    /// (a `[u8; 16]` value would be moved byte by byte or through a `memmove` call).
    ///
    /// # Safety
    /// `dst` must be valid for 16 bytes and 4-aligned; `src..src + 16` inside the packet.
    #[inline(always)]
    unsafe fn copy16(dst: *mut u32, src: usize) {
        // SAFETY: per the contract above.
        unsafe {
            dst.write(load_raw32(src));
            dst.add(1).write(load_raw32(src + 4));
            dst.add(2).write(load_raw32(src + 8));
            dst.add(3).write(load_raw32(src + 12));
        }
    }

    /// The LPM trie key of an IPv6 source, 4-aligned (aya's `Key` is packed: built
    /// in place it would take byte stores).
    #[repr(C)]
    struct Lpm6 {
        prefix_len: u32,
        addr: [u32; 4],
    }

    /// Where a TCP segment's headers are; addresses and ports are read only when needed.
    #[derive(Clone, Copy)]
    struct Seg {
        /// IP header (IPv4 or IPv6, per `v6`); its fixed part is inside the packet.
        ip: usize,
        /// TCP header; its 20 fixed bytes are inside the packet.
        th: usize,
        v6: bool,
        flags: u8,
    }

    /// Why [`parse`] did not return a TCP segment.
    #[derive(Clone, Copy)]
    enum Miss {
        /// Pass and count this slot.
        Stat(Stat),
        /// ARP; its header starts at this offset.
        Arp(usize),
        /// ICMPv6 right after a 40-byte IPv6 header at this offset.
        Icmp6(usize),
    }

    impl From<Stat> for Miss {
        #[inline(always)]
        fn from(s: Stat) -> Self {
            Miss::Stat(s)
        }
    }

    /// The `xdp_ingress` baseline for benches: the cheapest possible XDP program.
    #[xdp]
    pub fn xdp_pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    /// Ingress accounting. Always passes, except SYNs of a netblock over its limit with
    /// action drop. Inlined into the `#[xdp]` entry point: as a separate function (LLVM's
    /// choice once the body grew) every packet, ACKs included, paid a BPF-to-BPF call.
    #[xdp]
    #[inline(always)]
    pub fn xdp_ingress(ctx: XdpContext) -> u32 {
        let data = ctx.data();
        let end = ctx.data_end();
        let seg = match parse(data, end) {
            Ok(s) => s,
            Err(miss) => {
                let Some(stats) = STATS.get_ptr_mut(0) else {
                    return xdp_action::XDP_PASS;
                };
                bump(stats, Stat::Packets);
                return match miss {
                    Miss::Stat(why) => {
                        bump(stats, why);
                        xdp_action::XDP_PASS
                    }
                    Miss::Arp(off) => arp(&ctx, off, stats),
                    Miss::Icmp6(off) => ndisc(&ctx, off, stats),
                };
            }
        };
        // Fast path: neither FIN nor RST nor a bare SYN → nothing to account.
        let f = seg.flags;
        if f & (TCP_FIN | TCP_RST) == 0 && f & (TCP_SYN | TCP_ACK) != TCP_SYN {
            return xdp_action::XDP_PASS;
        }
        let Some(stats) = STATS.get_ptr_mut(0) else {
            return xdp_action::XDP_PASS;
        };
        bump(stats, Stat::Packets);
        let dport = load_be16(seg.th + 2);
        let counted = match PORTS.get(0) {
            Some(p) => p.contains(dport),
            None => false,
        };
        if !counted {
            // Userspace expiry of a flow whose port is no longer counted still has to
            // reach the close path.
            if f & TCP_RST != 0 && is_expiry(&ctx) {
                close(&seg, stats, true);
            } else {
                bump(stats, Stat::UncountedPort);
            }
            return xdp_action::XDP_PASS;
        }
        if f & (TCP_FIN | TCP_RST) != 0 {
            // SYN+FIN / SYN+RST never open a connection in Linux: treat as close.
            close(&seg, stats, is_expiry(&ctx));
            return xdp_action::XDP_PASS;
        }
        syn(&seg, stats)
    }

    /// Ethernet (+ one 802.1Q tag), IPv4/IPv6, TCP; no map access. `Err` = pass and count
    /// that slot.
    #[inline(always)]
    fn parse(data: usize, end: usize) -> Result<Seg, Miss> {
        let Some(eth) = ptr_at(data, end, 0, ETH_HLEN) else {
            return Err(Stat::Truncated.into());
        };
        let mut ethertype = load_raw16(eth + 12);
        let mut off = ETH_HLEN;
        if ethertype == ETH_P_8021Q_RAW {
            let Some(tag) = ptr_at(data, end, ETH_HLEN, 4) else {
                return Err(Stat::Truncated.into());
            };
            ethertype = load_raw16(tag + 2);
            off = ETH_HLEN + 4;
        }
        let (ip, l4, v6) = if ethertype == ETH_P_IP_RAW {
            let (ip, l4) = parse_v4(data, end, off)?;
            (ip, l4, false)
        } else if ethertype == ETH_P_IPV6_RAW {
            let (ip, l4) = parse_v6(data, end, off)?;
            (ip, l4, true)
        } else if ethertype == ETH_P_ARP_RAW {
            return Err(Miss::Arp(off));
        } else {
            return Err(Stat::NonIp.into());
        };
        let Some(th) = ptr_at(data, end, l4, TCP_HLEN) else {
            return Err(Stat::Truncated.into());
        };
        Ok(Seg {
            ip,
            th,
            v6,
            flags: load_u8(th + 13),
        })
    }

    /// Returns the IP header and the TCP header offset.
    #[inline(always)]
    fn parse_v4(data: usize, end: usize, off: usize) -> Result<(usize, usize), Stat> {
        let Some(ip) = ptr_at(data, end, off, 20) else {
            return Err(Stat::Truncated);
        };
        let ver_ihl = load_u8(ip);
        let ihl = ((ver_ihl & 0x0f) as usize) * 4;
        if ver_ihl >> 4 != 4 || ihl < 20 {
            return Err(Stat::Malformed);
        }
        if load_u8(ip + 9) != IPPROTO_TCP {
            return Err(Stat::NonTcp);
        }
        // Non-first fragments have no TCP header; first fragments with MF are passed too
        // (a SYN is never fragmented by a sane stack). Offset + MF = 0x3fff of the
        // big-endian field.
        if load_raw16(ip + 6) & 0x3fffu16.to_be() != 0 {
            return Err(Stat::Fragments);
        }
        // IPv4 options are skipped, not parsed.
        Ok((ip, off + ihl))
    }

    /// Returns the IP header and the TCP header offset. Walks at most 3 extension headers
    /// (hop-by-hop, routing, destination options, or an atomic fragment header — any
    /// combination); longer chains are passed and counted as `ipv6_ext_unsupported`.
    #[inline(always)]
    fn parse_v6(data: usize, end: usize, off: usize) -> Result<(usize, usize), Miss> {
        let Some(ip) = ptr_at(data, end, off, 40) else {
            return Err(Stat::Truncated.into());
        };
        if load_u8(ip) >> 4 != 6 {
            return Err(Stat::Malformed.into());
        }
        let mut nh = load_u8(ip + 6);
        let mut l4 = off + 40;
        if nh == IPPROTO_TCP {
            return Ok((ip, l4));
        }
        if nh == IPPROTO_ICMPV6 {
            return Err(Miss::Icmp6(off));
        }
        let mut i = 0;
        while i < 3 {
            i += 1;
            if nh == IPV6_FRAGMENT {
                let Some(fh) = ptr_at(data, end, l4, 8) else {
                    return Err(Stat::Truncated.into());
                };
                // Offset (13 bits) or M flag set: a real fragment.
                if load_be16(fh + 2) & 0xfff9 != 0 {
                    return Err(Stat::Fragments.into());
                }
                nh = load_u8(fh);
                l4 += 8;
            } else if nh == IPV6_HOPOPTS || nh == IPV6_ROUTING || nh == IPV6_DSTOPTS {
                let Some(eh) = ptr_at(data, end, l4, 2) else {
                    return Err(Stat::Truncated.into());
                };
                nh = load_u8(eh);
                l4 += (load_u8(eh + 1) as usize + 1) * 8;
            } else {
                return Err(Stat::NonTcp.into());
            }
            if nh == IPPROTO_TCP {
                return Ok((ip, l4));
            }
        }
        if nh == IPV6_FRAGMENT || nh == IPV6_HOPOPTS || nh == IPV6_ROUTING || nh == IPV6_DSTOPTS {
            Err(Stat::Ipv6ExtUnsupported.into())
        } else {
            Err(Stat::NonTcp.into())
        }
    }

    /// Whether this packet carries userspace's expiry marker in its XDP metadata.
    #[inline(always)]
    fn is_expiry(ctx: &XdpContext) -> bool {
        let meta = ctx.metadata();
        if meta + size_of::<ExpireMeta>() > ctx.metadata_end() {
            return false;
        }
        // SAFETY: the metadata holds at least an ExpireMeta (checked above).
        unsafe { core::ptr::read_unaligned(meta as *const u32) == EXPIRE_MAGIC }
    }

    /// Writes the source as a 16-byte address (IPv4 in the first 4 bytes, the rest zero).
    ///
    /// # Safety
    /// `dst` must be valid for 16 bytes and 4-aligned.
    #[inline(always)]
    unsafe fn write_saddr16(dst: *mut u32, s: &Seg) {
        // SAFETY: per the contract above; the source is inside the packet (`parse`).
        unsafe {
            if s.v6 {
                copy16(dst, s.ip + 8);
            } else {
                dst.write(load_raw32(s.ip + 12));
                dst.add(1).write(0);
                dst.add(2).write(0);
                dst.add(3).write(0);
            }
        }
    }

    /// Longest-prefix match of the source; 0 when no netblock covers it.
    #[inline(always)]
    fn classify(s: &Seg) -> u32 {
        let id = if s.v6 {
            let mut k = MaybeUninit::<Lpm6>::uninit();
            let p = k.as_mut_ptr();
            // SAFETY: `Lpm6` has aya's `Key<[u8; 16]>` layout (u32 prefix length, then 16
            // address bytes; `Key` is packed, so any alignment will do) and is fully written.
            unsafe {
                (*p).prefix_len = 128;
                copy16(&raw mut (*p).addr as *mut u32, s.ip + 8);
                NETBLOCKS_V6.get(&*(p as *const Key<[u8; 16]>)).copied()
            }
        } else {
            NETBLOCKS_V4
                .get(Key::new(32, load_raw32(s.ip + 12).to_ne_bytes()))
                .copied()
        };
        match id {
            Some(id) if id < MAX_NETBLOCKS => id,
            _ => 0,
        }
    }

    // ---- Flow and source tables (set-associative ARRAYs, see the map definitions) ----

    const K1: u64 = 0x9E37_79B9_7F4A_7C15;
    const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;

    /// One round of a multiply-xorshift hash (64-bit multiplies are single JIT
    /// instructions; the shift carries the high product bits back down).
    #[inline(always)]
    fn mix(h: u64, v: u64) -> u64 {
        let x = (h ^ v).wrapping_mul(K1);
        x ^ (x >> 32)
    }

    /// MurmurHash3's 64-bit finaliser: every input bit reaches every output bit (set
    /// indices come from the low bits, tags from all of them).
    #[inline(always)]
    fn finish(h: u64) -> u64 {
        let h = (h ^ (h >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        let h = (h ^ (h >> 33)).wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        h ^ (h >> 33)
    }

    /// A flow's tag: even and non-zero (0 = free slot, tag + 1 = being written).
    #[inline(always)]
    fn flow_tag(h: u64) -> u64 {
        (h | 2) & !1
    }

    /// Way `i`, laundered through [`Runtime::zero`] so the verifier cannot tell the ways
    /// apart: the paths of a search that found different ways then merge into one state.
    #[inline(always)]
    fn way(i: usize, rt: &Runtime) -> usize {
        (i + rt.zero as usize) & (WAYS - 1)
    }

    #[inline(always)]
    fn load64(p: *const u64) -> u64 {
        // SAFETY: callers pass 8-aligned pointers into live map values.
        unsafe { core::ptr::read_volatile(p) }
    }

    /// Compare-and-swap (BPF_CMPXCHG, fully ordered); returns (previous value, swapped).
    #[inline(always)]
    fn cas(p: *mut u64, old: u64, new: u64) -> (u64, bool) {
        // SAFETY: callers pass 8-aligned pointers into live map values.
        unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(p, old, new)
        }
    }

    /// Stores `v` with a fully ordered exchange: the slot's other fields, written before,
    /// are visible to any CPU that sees `v`.
    #[inline(always)]
    fn publish(p: *mut u64, v: u64) {
        // SAFETY: as `cas`.
        unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(p, v) };
    }

    #[inline(always)]
    fn atomic_add(p: *mut u64, v: u64) {
        // SAFETY: as `cas`.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
    }

    /// Client and server ports as the flow key's last word (host order, client first).
    #[inline(always)]
    fn ports_word(s: &Seg) -> u32 {
        u32::from(load_be16(s.th)) | (u32::from(load_be16(s.th + 2)) << 16)
    }

    /// A flow table slot; `state` is its first field in both families.
    trait FlowSlot {
        /// The seeded hash of the segment's 4-tuple.
        fn hash(s: &Seg, rt: &Runtime) -> u64;
        /// Set `idx`: its first slot and its overflow counter.
        fn set(idx: u32) -> Option<(*mut Self, *mut u64)>
        where
            Self: Sized;
        /// Whether the slot holds the segment's 4-tuple.
        fn key_is(p: *const Self, s: &Seg) -> bool;
        /// Writes key, owner and open time (the slot is claimed by this CPU).
        fn fill(p: *mut Self, s: &Seg, netblock: u32, source: u32, now: u64);
        /// (netblock, source) of a live slot.
        fn owner(p: *const Self) -> (u32, u32);
    }

    impl FlowSlot for FlowSlotV4 {
        #[inline(always)]
        fn hash(s: &Seg, rt: &Runtime) -> u64 {
            let addrs = (u64::from(load_raw32(s.ip + 12)) << 32) | u64::from(load_raw32(s.ip + 16));
            finish(mix(mix(rt.seed, addrs), u64::from(ports_word(s))))
        }

        #[inline(always)]
        fn set(idx: u32) -> Option<(*mut Self, *mut u64)> {
            let set = FLOWS_V4.get_ptr_mut(idx)?;
            // SAFETY: a live map value.
            unsafe { Some((&raw mut (*set).slots as *mut Self, &raw mut (*set).overflow)) }
        }

        #[inline(always)]
        fn key_is(p: *const Self, s: &Seg) -> bool {
            // SAFETY: a live map value; the key is 3 words at a 4-aligned offset.
            unsafe {
                let k = &raw const (*p).key as *const u32;
                k.read() == load_raw32(s.ip + 12)
                    && k.add(1).read() == load_raw32(s.ip + 16)
                    && k.add(2).read() == ports_word(s)
            }
        }

        #[inline(always)]
        fn fill(p: *mut Self, s: &Seg, netblock: u32, source: u32, now: u64) {
            // SAFETY: a live map value claimed by this CPU.
            unsafe {
                let k = &raw mut (*p).key as *mut u32;
                k.write(load_raw32(s.ip + 12));
                k.add(1).write(load_raw32(s.ip + 16));
                k.add(2).write(ports_word(s));
                (*p).netblock = netblock;
                (*p).source = source;
                (*p).opened_ns = now;
            }
        }

        #[inline(always)]
        fn owner(p: *const Self) -> (u32, u32) {
            // SAFETY: a live map value.
            unsafe { ((*p).netblock, (*p).source) }
        }
    }

    impl FlowSlot for FlowSlotV6 {
        #[inline(always)]
        fn hash(s: &Seg, rt: &Runtime) -> u64 {
            let w = |o: usize| {
                // SAFETY: the addresses (ip + 8 .. ip + 40) are inside the packet (`parse`).
                unsafe { core::ptr::read_unaligned((s.ip + o) as *const u64) }
            };
            let mut h = mix(rt.seed, w(8));
            h = mix(h, w(16));
            h = mix(h, w(24));
            h = mix(h, w(32));
            finish(mix(h, u64::from(ports_word(s))))
        }

        #[inline(always)]
        fn set(idx: u32) -> Option<(*mut Self, *mut u64)> {
            let set = FLOWS_V6.get_ptr_mut(idx)?;
            // SAFETY: a live map value.
            unsafe { Some((&raw mut (*set).slots as *mut Self, &raw mut (*set).overflow)) }
        }

        #[inline(always)]
        fn key_is(p: *const Self, s: &Seg) -> bool {
            // SAFETY: a live map value; the key is 9 words at a 4-aligned offset.
            unsafe {
                let k = &raw const (*p).key as *const u32;
                let mut diff = k.add(8).read() ^ ports_word(s);
                let mut i = 0;
                while i < 8 {
                    diff |= k.add(i).read() ^ load_raw32(s.ip + 8 + 4 * i);
                    i += 1;
                }
                diff == 0
            }
        }

        #[inline(always)]
        fn fill(p: *mut Self, s: &Seg, netblock: u32, source: u32, now: u64) {
            // SAFETY: a live map value claimed by this CPU; addresses inside the packet.
            unsafe {
                let k = &raw mut (*p).key as *mut u32;
                let mut i = 0;
                while i < 8 {
                    k.add(i).write(load_raw32(s.ip + 8 + 4 * i));
                    i += 1;
                }
                k.add(8).write(ports_word(s));
                (*p).netblock = netblock;
                (*p).source = source;
                (*p).opened_ns = now;
            }
        }

        #[inline(always)]
        fn owner(p: *const Self) -> (u32, u32) {
            // SAFETY: a live map value.
            unsafe { ((*p).netblock, (*p).source) }
        }
    }

    /// A source's slot as the SYN path found or claimed it.
    #[derive(Clone, Copy)]
    struct Src {
        slot: *mut SourceSlot,
        /// `set × WAYS + way`.
        index: u32,
        /// The tag bits of the slot's state.
        tag: u64,
    }

    /// The source's state tag (39 bits above the count; bit 63 clear, so never PENDING),
    /// and its two candidate sets (from independent hash bits).
    #[inline(always)]
    fn source_hash(s: &Seg, rt: &Runtime) -> (u64, u32, u32) {
        let h = if s.v6 {
            let w = |o: usize| {
                // SAFETY: the source (ip + 8 .. ip + 24) is inside the packet (`parse`).
                unsafe { core::ptr::read_unaligned((s.ip + o) as *const u64) }
            };
            finish(mix(mix(rt.seed ^ K2, w(8)), w(16)))
        } else {
            finish(mix(rt.seed, u64::from(load_raw32(s.ip + 12))))
        };
        let tag = (((h >> 25) & ((1 << 39) - 1)) | 1) << 24;
        let m = rt.source_set_mask;
        (tag, h as u32 & m, (h >> 32) as u32 & m)
    }

    /// Whether a source slot holds the segment's source address.
    #[inline(always)]
    fn source_is(p: *const SourceSlot, s: &Seg) -> bool {
        // SAFETY: a live map value; the key (family word + 4 address words) is 4-aligned.
        unsafe {
            let k = &raw const (*p).key as *const u32;
            if s.v6 {
                k.read() == u32::from(AF_INET6)
                    && (k.add(1).read() ^ load_raw32(s.ip + 8))
                        | (k.add(2).read() ^ load_raw32(s.ip + 12))
                        | (k.add(3).read() ^ load_raw32(s.ip + 16))
                        | (k.add(4).read() ^ load_raw32(s.ip + 20))
                        == 0
            } else {
                k.read() == u32::from(AF_INET)
                    && k.add(1).read() == load_raw32(s.ip + 12)
                    && k.add(2).read() | k.add(3).read() | k.add(4).read() == 0
            }
        }
    }

    /// The live slot of the segment's source in set `set`, if any.
    #[inline(always)]
    fn source_find(set: u32, tag: u64, s: &Seg, rt: &Runtime) -> Option<Src> {
        let v = SOURCES.get_ptr_mut(set)?;
        // SAFETY: a live map value.
        let slots = unsafe { &raw mut (*v).slots } as *mut SourceSlot;
        let mut i = 0;
        while i < WAYS {
            // SAFETY: i < WAYS.
            let p = unsafe { slots.add(i) };
            let st = load64(p as *const u64);
            if st != SOURCE_PENDING && st & !SOURCE_CURRENT_MASK == tag && source_is(p, s) {
                let w = way(i, rt);
                return Some(Src {
                    // SAFETY: w < WAYS.
                    slot: unsafe { slots.add(w) },
                    index: set * WAYS as u32 + w as u32,
                    tag,
                });
            }
            i += 1;
        }
        None
    }

    /// Claims a free slot, or one whose source has no open connection, in set `set` for the
    /// segment's source (count 0), with classification `class`.
    #[inline(always)]
    fn source_claim(set: u32, tag: u64, s: &Seg, class: u64, rt: &Runtime) -> Option<Src> {
        let v = SOURCES.get_ptr_mut(set)?;
        // SAFETY: a live map value.
        let slots = unsafe { &raw mut (*v).slots } as *mut SourceSlot;
        let mut i = 0;
        while i < WAYS {
            // SAFETY: i < WAYS.
            let p = unsafe { slots.add(i) };
            let st = load64(p as *const u64);
            if st != SOURCE_PENDING
                && st & SOURCE_CURRENT_MASK == 0
                && cas(p as *mut u64, st, SOURCE_PENDING).1
            {
                // SAFETY: this CPU owns the slot until it publishes the state.
                unsafe {
                    let k = &raw mut (*p).key as *mut u32;
                    k.write(u32::from(if s.v6 { AF_INET6 } else { AF_INET }));
                    write_saddr16(k.add(1), s);
                    (*p)._pad = 0;
                    (*p).class = class;
                    (*p).opened = 0;
                    (*p).closed = 0;
                    (*p)._pad2 = 0;
                }
                publish(p as *mut u64, tag);
                let w = way(i, rt);
                return Some(Src {
                    // SAFETY: w < WAYS.
                    slot: unsafe { slots.add(w) },
                    index: set * WAYS as u32 + w as u32,
                    tag,
                });
            }
            i += 1;
        }
        None
    }

    /// The SYN's netblock — cached in the source's slot while the netblock generation holds,
    /// else from the LPM trie — and the source's slot, found or newly claimed (None: both
    /// candidate sets are full of sources with open connections).
    #[inline(always)]
    fn classify_source(s: &Seg, rt: &Runtime) -> (u32, Option<Src>) {
        let (tag, set1, set2) = source_hash(s, rt);
        let generation = u64::from(rt.netblock_gen) << 32;
        let found = match source_find(set1, tag, s, rt) {
            Some(f) => Some(f),
            None if set2 != set1 => source_find(set2, tag, s, rt),
            None => None,
        };
        if let Some(f) = found {
            // SAFETY: a live map value.
            let cp = unsafe { &raw mut (*f.slot).class } as *mut u64;
            let class = load64(cp);
            if class & !0xffff_ffff == generation && (class as u32) < MAX_NETBLOCKS {
                return (class as u32, Some(f));
            }
            let nb = classify(s);
            // A CAS, not a store: a slot re-claimed meanwhile keeps its new owner's class.
            cas(cp, class, generation | u64::from(nb));
            return (nb, Some(f));
        }
        let nb = classify(s);
        let class = generation | u64::from(nb);
        let claimed = match source_claim(set1, tag, s, class, rt) {
            Some(c) => Some(c),
            None if set2 != set1 => source_claim(set2, tag, s, class, rt),
            None => None,
        };
        (nb, claimed)
    }

    /// Adds one open connection to the source (compare-and-swap, so a slot being re-claimed
    /// is never counted into); the slot index, or NO_SOURCE if the slot changed owner.
    #[inline(always)]
    fn source_take(src: Option<Src>, stats: Stats) -> u32 {
        if let Some(c) = src {
            let sp = c.slot as *mut u64;
            let mut tries = 0;
            while tries < 4 {
                let st = load64(sp);
                if st & !SOURCE_CURRENT_MASK != c.tag
                    || st & SOURCE_CURRENT_MASK == SOURCE_CURRENT_MASK
                {
                    break;
                }
                if cas(sp, st, st + 1).1 {
                    // SAFETY: a live map value (pinned by the count just taken).
                    atomic_add(unsafe { &raw mut (*c.slot).opened }, 1);
                    return c.index;
                }
                tries += 1;
            }
        }
        bump(stats, Stat::SourceMapInsertFailed);
        NO_SOURCE
    }

    #[inline(always)]
    fn syn(s: &Seg, stats: Stats) -> u32 {
        bump(stats, Stat::Syn);
        let Some(rt) = RUNTIME.get(0) else {
            bump(stats, Stat::FlowInsertFailed);
            return xdp_action::XDP_PASS;
        };
        let c = if s.v6 {
            candidates::<FlowSlotV6>(s, rt).map(|c| syn_in(c, s, rt, stats))
        } else {
            candidates::<FlowSlotV4>(s, rt).map(|c| syn_in(c, s, rt, stats))
        };
        c.unwrap_or_else(|| {
            bump(stats, Stat::FlowInsertFailed);
            xdp_action::XDP_PASS
        })
    }

    /// A flow's two candidate sets (first: slots and overflow counter; second: index only,
    /// looked at only when the first overflowed) and its tag.
    #[derive(Clone, Copy)]
    struct Cand<S> {
        slots: *mut S,
        overflow: *mut u64,
        first: u32,
        second: u32,
        tag: u64,
    }

    impl<S: FlowSlot> Cand<S> {
        /// The second set, if distinct from the first and any flow of the first lives there.
        #[inline(always)]
        fn overflowed(&self) -> Option<*mut S> {
            if self.second == self.first || load64(self.overflow) == 0 {
                return None;
            }
            S::set(self.second).map(|(slots, _)| slots)
        }
    }

    #[inline(always)]
    fn candidates<S: FlowSlot>(s: &Seg, rt: &Runtime) -> Option<Cand<S>> {
        let h = S::hash(s, rt);
        let first = (h >> 32) as u32 & rt.flow_set_mask;
        let (slots, overflow) = S::set(first)?;
        Some(Cand {
            slots,
            overflow,
            first,
            second: h as u32 & rt.flow_set_mask,
            tag: flow_tag(h),
        })
    }

    /// Whether the set holds the segment's flow (live, or being written by another CPU).
    #[inline(always)]
    fn seen<S: FlowSlot>(slots: *mut S, tag: u64, s: &Seg) -> bool {
        let mut i = 0;
        while i < WAYS {
            // SAFETY: i < WAYS.
            let p = unsafe { slots.add(i) };
            if is_same_flow(p, load64(p as *const u64), tag, s) {
                return true;
            }
            i += 1;
        }
        false
    }

    enum Claim {
        /// This CPU claimed that (laundered) way.
        Won(usize),
        /// A copy of this SYN on another CPU holds a way.
        Same,
        Full,
    }

    /// Claims a free way of the set for the flow (state = tag + 1 until published).
    #[inline(always)]
    fn claim<S: FlowSlot>(slots: *mut S, tag: u64, s: &Seg, rt: &Runtime) -> Claim {
        let mut i = 0;
        while i < WAYS {
            // SAFETY: i < WAYS.
            let p = unsafe { slots.add(i) };
            let mut st = load64(p as *const u64);
            if st == 0 {
                let (prev, ok) = cas(p as *mut u64, 0, tag | 1);
                if ok {
                    return Claim::Won(way(i, rt));
                }
                st = prev;
            }
            if is_same_flow(p, st, tag, s) {
                return Claim::Same;
            }
            i += 1;
        }
        Claim::Full
    }

    /// Whether slot state `st` is the segment's flow (live with its key, or being written
    /// with its tag: a concurrent copy of the same SYN).
    #[inline(always)]
    fn is_same_flow<S: FlowSlot>(p: *const S, st: u64, tag: u64, s: &Seg) -> bool {
        st & !1 == tag && (st & 1 != 0 || S::key_is(p, s))
    }

    #[inline(always)]
    fn syn_in<S: FlowSlot>(c: Cand<S>, s: &Seg, rt: &Runtime, stats: Stats) -> u32 {
        let tag = c.tag;
        if seen(c.slots, tag, s) || c.overflowed().is_some_and(|s2| seen(s2, tag, s)) {
            bump(stats, Stat::SynRetransmit);
            return xdp_action::XDP_PASS;
        }
        let (nb, src) = classify_source(s, rt);
        let nbs = NB_STATS.get_ptr_mut(nb);
        if let Some(n) = nbs {
            // SAFETY: this CPU's value of an existing array slot.
            unsafe { (*n).syn += 1 };
        }
        let Some(local) = LOCAL.get_ptr_mut(nb) else {
            return xdp_action::XDP_PASS;
        };
        if let Some(lim) = LIMITS.get(nb)
            && lim.limit != 0
        {
            // SAFETY: array values are 8-byte aligned and live as long as the map.
            // A plain aligned 8-byte load is atomic on every BPF JIT.
            let l = unsafe { core::ptr::read_volatile(local) };
            let r = REMOTE.get(nb).copied().unwrap_or(0);
            // Check-then-add is not one atomic step: concurrent SYNs on different CPUs
            // may overshoot the limit by at most (CPUs − 1).
            if l.saturating_add(r) >= lim.limit {
                if lim.action == ACTION_DROP {
                    bump(stats, Stat::Dropped);
                    if let Some(n) = nbs {
                        // SAFETY: as above.
                        unsafe { (*n).dropped += 1 };
                    }
                    drop_event(s, nb, stats);
                    return xdp_action::XDP_DROP;
                }
                // Count-only: the connection is real, so it is still tracked and
                // counted; the excess is reported.
                bump(stats, Stat::OverLimit);
                if let Some(n) = nbs {
                    // SAFETY: as above.
                    unsafe { (*n).over_limit += 1 };
                }
            }
        }
        // Claim a free way of the first set, else of the second (announced in the first's
        // overflow counter before, so a concurrent copy of this SYN looks there too).
        let p = match claim(c.slots, tag, s, rt) {
            // SAFETY: w < WAYS.
            Claim::Won(w) => unsafe { c.slots.add(w) },
            Claim::Same => {
                bump(stats, Stat::SynRetransmit);
                return xdp_action::XDP_PASS;
            }
            Claim::Full => {
                let second = if c.second == c.first {
                    None
                } else {
                    S::set(c.second)
                };
                let Some((s2, _)) = second else {
                    bump(stats, Stat::FlowMapFull);
                    return xdp_action::XDP_PASS;
                };
                atomic_add(c.overflow, 1);
                match claim(s2, tag, s, rt) {
                    // SAFETY: w < WAYS.
                    Claim::Won(w) => unsafe { s2.add(w) },
                    Claim::Same => {
                        atomic_add(c.overflow, u64::MAX);
                        bump(stats, Stat::SynRetransmit);
                        return xdp_action::XDP_PASS;
                    }
                    Claim::Full => {
                        atomic_add(c.overflow, u64::MAX);
                        bump(stats, Stat::FlowMapFull);
                        return xdp_action::XDP_PASS;
                    }
                }
            }
        };
        let source = source_take(src, stats);
        S::fill(p, s, nb, source, rt.clock_ns);
        publish(p as *mut u64, tag);
        atomic_add(local, 1);
        bump(stats, Stat::Opened);
        if let Some(n) = nbs {
            // SAFETY: as above.
            unsafe { (*n).opened += 1 };
        }
        xdp_action::XDP_PASS
    }
    /// Reports a dropped SYN, unless the ring is full: then only `ringbuf_full` counts it,
    /// without the (locked, failing) reserve — under a flood nobody may be reading.
    #[inline(always)]
    fn drop_event(s: &Seg, nb: u32, stats: Stats) {
        if DROP_EVENTS.query(BPF_RB_AVAIL_DATA) + DROP_RECORD_BYTES > DROP_EVENTS_BYTES as u64 {
            bump(stats, Stat::RingbufFull);
            return;
        }
        match DROP_EVENTS.reserve::<DropEvent>(0) {
            Some(mut e) => {
                let p = e.as_mut_ptr();
                // SAFETY: `p` is the reserved, 8-aligned record; every field is written.
                unsafe {
                    (*p).ts_ns = bpf_ktime_get_coarse_ns();
                    write_saddr16(&raw mut (*p).saddr as *mut u32, s);
                    (*p).netblock = nb;
                    (*p).dport = load_be16(s.th + 2);
                    (*p).family = if s.v6 { AF_INET6 } else { AF_INET };
                    (*p)._pad = 0;
                }
                e.submit(0);
            }
            None => bump(stats, Stat::RingbufFull),
        }
    }

    /// Client FIN/RST (or userspace expiry): free the flow's slot; only the CPU whose
    /// compare-and-swap frees it decrements, so a close counts exactly once.
    #[inline(always)]
    fn close(s: &Seg, stats: Stats, expiry: bool) {
        let Some(rt) = RUNTIME.get(0) else {
            bump(stats, Stat::FinRstNoFlow);
            return;
        };
        let owner = if s.v6 {
            close_flow::<FlowSlotV6>(s, rt)
        } else {
            close_flow::<FlowSlotV4>(s, rt)
        };
        let Some((nb, source)) = owner else {
            bump(stats, Stat::FinRstNoFlow);
            return;
        };
        bump(
            stats,
            if expiry {
                Stat::Expired
            } else {
                Stat::FinRstClosed
            },
        );
        if let Some(local) = LOCAL.get_ptr_mut(nb) {
            // Underflow is checked with a plain read first (only a reset map or a bug can
            // get here with 0; the read/add window cannot make a correct count wrap).
            // SAFETY: array values are 8-byte aligned and live as long as the map.
            if unsafe { core::ptr::read_volatile(local) } == 0 {
                bump(stats, Stat::LocalUnderflow);
            } else {
                // Adding 2^64 − 1 is subtracting 1.
                atomic_add(local, u64::MAX);
            }
        }
        if let Some(n) = NB_STATS.get_ptr_mut(nb) {
            // SAFETY: this CPU's value of an existing array slot.
            unsafe { (*n).closed += 1 };
        }
        let slot = if source == NO_SOURCE {
            None
        } else {
            SOURCES.get_ptr_mut(source / WAYS as u32).map(|v| {
                // SAFETY: a live map value; the way is < WAYS.
                unsafe { (&raw mut (*v).slots as *mut SourceSlot).add(source as usize % WAYS) }
            })
        };
        let Some(p) = slot else {
            // The open found no source slot (counted then as source_map_insert_failed).
            bump(stats, Stat::SourceEvicted);
            return;
        };
        // SAFETY: a live map value, pinned by this flow's count.
        atomic_add(unsafe { &raw mut (*p).closed }, 1);
        if load64(p as *const u64) & SOURCE_CURRENT_MASK == 0 {
            bump(stats, Stat::LocalUnderflow);
        } else {
            atomic_add(p as *mut u64, u64::MAX);
        }
    }

    /// Frees the segment's flow slot, in its first set or (if that overflowed) its second;
    /// its (netblock, source) if this CPU freed it.
    #[inline(always)]
    fn close_flow<S: FlowSlot>(s: &Seg, rt: &Runtime) -> Option<(u32, u32)> {
        let c = candidates::<S>(s, rt)?;
        if let Some(owner) = close_in(c.slots, c.tag, s) {
            return Some(owner);
        }
        let owner = close_in(c.overflowed()?, c.tag, s)?;
        atomic_add(c.overflow, u64::MAX);
        Some(owner)
    }

    /// Frees the segment's live flow slot in one set; its (netblock, source) if this CPU
    /// freed it.
    #[inline(always)]
    fn close_in<S: FlowSlot>(slots: *mut S, tag: u64, s: &Seg) -> Option<(u32, u32)> {
        let mut i = 0;
        while i < WAYS {
            // SAFETY: i < WAYS.
            let p = unsafe { slots.add(i) };
            if load64(p as *const u64) == tag && S::key_is(p, s) {
                // Read before the slot is freed (it may be re-claimed right after).
                let owner = S::owner(p);
                return if cas(p as *mut u64, tag, 0).1 {
                    Some(owner)
                } else {
                    None
                };
            }
            i += 1;
        }
        None
    }

    #[inline(always)]
    fn store_raw32(p: usize, v: u32) {
        // SAFETY: bounds were checked by the caller; unaligned write of 4 bytes.
        unsafe { core::ptr::write_unaligned(p as *mut u32, v) }
    }

    #[inline(always)]
    fn store_raw16(p: usize, v: u16) {
        // SAFETY: bounds were checked by the caller; unaligned write of 2 bytes.
        unsafe { core::ptr::write_unaligned(p as *mut u16, v) }
    }

    /// The VIPS entry for an IPv4 address (wire-order word), if this node answers for it on
    /// `ifindex`.
    #[inline(always)]
    fn vip_v4(addr: u32, ifindex: u32) -> Option<*const VipValue> {
        let mut k = MaybeUninit::<VipKey>::uninit();
        let w = k.as_mut_ptr() as *mut u64;
        // SAFETY: VipKey is 24 bytes, 8-aligned: the address (16 bytes), then `family` and
        // seven zero bytes (the low byte of a little-endian word; the target is bpfel).
        // Written as three aligned 8-byte stores: LLVM would merge 4-byte stores into
        // 8-byte ones at 4-byte offsets, which the verifier rejects on the stack.
        let key = unsafe {
            w.write(u64::from(addr));
            w.add(1).write(0);
            w.add(2).write(u64::from(AF_INET));
            k.assume_init()
        };
        vip_check(VIPS.get_ptr(&key)?, ifindex)
    }

    /// The VIPS entry for the IPv6 address at packet address `p` (16 bytes, in bounds).
    #[inline(always)]
    fn vip_v6(p: usize, ifindex: u32) -> Option<*const VipValue> {
        let mut k = MaybeUninit::<VipKey>::uninit();
        let w = k.as_mut_ptr() as *mut u64;
        // SAFETY: as in `vip_v4`; `p..p + 16` is inside the packet (caller).
        let key = unsafe {
            w.write(core::ptr::read_unaligned(p as *const u64));
            w.add(1)
                .write(core::ptr::read_unaligned((p + 8) as *const u64));
            w.add(2).write(u64::from(AF_INET6));
            k.assume_init()
        };
        vip_check(VIPS.get_ptr(&key)?, ifindex)
    }

    #[inline(always)]
    fn vip_check(v: *const VipValue, ifindex: u32) -> Option<*const VipValue> {
        // SAFETY: a live map value.
        let want = unsafe { (*v).ifindex };
        if want != 0 && want != ifindex {
            return None;
        }
        Some(v)
    }

    /// Whether the daemon renewed its lease recently enough (coarse clock: a lease may be
    /// seen as fresh up to one tick after it expired).
    #[inline(always)]
    fn lease_fresh() -> bool {
        let Some(l) = LEASE.get(0) else {
            return false;
        };
        if l.renewed_ns == 0 {
            return false;
        }
        // SAFETY: helper without preconditions.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        now <= l.renewed_ns.saturating_add(l.duration_ns)
    }

    /// The MAC of a VIPS value as (first 4 bytes, last 2 bytes) in wire order.
    #[inline(always)]
    fn vip_mac(v: *const VipValue) -> (u32, u16) {
        // SAFETY: a live map value; `mac` starts 4 bytes into the 4-aligned value.
        unsafe {
            let m = &raw const (*v).mac as usize;
            (
                core::ptr::read_unaligned(m as *const u32),
                core::ptr::read_unaligned((m + 4) as *const u16),
            )
        }
    }

    /// An ARP request for an owned VIP becomes, in place, the reply from the VIP's MAC
    /// (XDP_TX), while the lease is fresh; with a stale lease it is dropped. Anything else
    /// passes as `non_ip`.
    #[inline(always)]
    fn arp(ctx: &XdpContext, off: usize, stats: Stats) -> u32 {
        let data = ctx.data();
        let end = ctx.data_end();
        let Some(a) = ptr_at(data, end, off, ARP_HLEN) else {
            bump(stats, Stat::NonIp);
            return xdp_action::XDP_PASS;
        };
        let spa = load_raw32(a + 14);
        let tpa = load_raw32(a + 24);
        // Only requests; a gratuitous request (sender = target) announces, it asks nothing.
        if load_raw32(a) != ARP_HDR_RAW || load_raw32(a + 4) != ARP_REQUEST_RAW || spa == tpa {
            bump(stats, Stat::NonIp);
            return xdp_action::XDP_PASS;
        }
        let Some(v) = vip_v4(tpa, ctx.ingress_ifindex() as u32) else {
            bump(stats, Stat::NonIp);
            return xdp_action::XDP_PASS;
        };
        // Stale lease: the daemon is hung or gone. Drop rather than pass, or the kernel
        // (which still has the address plumbed) would keep answering for this node.
        if !lease_fresh() {
            bump(stats, Stat::NonIp);
            bump(stats, Stat::LeaseStale);
            return xdp_action::XDP_DROP;
        }
        let (mac_hi, mac_lo) = vip_mac(v);
        let sha_hi = load_raw32(a + 8);
        let sha_lo = load_raw16(a + 12);
        // Ethernet: to the requester's frame source, from the VIP's MAC.
        store_raw32(data, load_raw32(data + 6));
        store_raw16(data + 4, load_raw16(data + 10));
        store_raw32(data + 6, mac_hi);
        store_raw16(data + 10, mac_lo);
        // ARP: oper 2; sender = VIP MAC / VIP; target = requester.
        store_raw16(a + 6, ARP_REPLY_OPER_RAW);
        store_raw32(a + 8, mac_hi);
        store_raw16(a + 12, mac_lo);
        store_raw32(a + 14, tpa);
        store_raw32(a + 18, sha_hi);
        store_raw16(a + 22, sha_lo);
        store_raw32(a + 24, spa);
        bump(stats, Stat::ArpAnswered);
        xdp_action::XDP_TX
    }

    /// A neighbour solicitation for an owned VIP becomes, in place, a solicited+override NA
    /// with the VIP's MAC as target link-layer address (XDP_TX), while the lease is fresh;
    /// with a stale lease it is dropped. DAD probes (unspecified source) and anything else pass as `non_tcp`.
    #[inline(always)]
    fn ndisc(ctx: &XdpContext, off: usize, stats: Stats) -> u32 {
        let data = ctx.data();
        let end = ctx.data_end();
        // IPv6 header + the 24-byte NS (type, code, checksum, reserved, target).
        let Some(ip) = ptr_at(data, end, off, 40 + 24) else {
            bump(stats, Stat::NonTcp);
            return xdp_action::XDP_PASS;
        };
        let icmp = ip + 40;
        let unspecified =
            load_raw32(ip + 8) | load_raw32(ip + 12) | load_raw32(ip + 16) | load_raw32(ip + 20)
                == 0;
        // RFC 4861 7.1.1: hop limit 255, code 0.
        if load_u8(icmp) != ND_NS || load_u8(icmp + 1) != 0 || load_u8(ip + 7) != 255 || unspecified
        {
            bump(stats, Stat::NonTcp);
            return xdp_action::XDP_PASS;
        }
        let Some(v) = vip_v6(icmp + 8, ctx.ingress_ifindex() as u32) else {
            bump(stats, Stat::NonTcp);
            return xdp_action::XDP_PASS;
        };
        // Stale lease: drop, as in `arp` (the kernel would answer for the plumbed VIP).
        if !lease_fresh() {
            bump(stats, Stat::NonTcp);
            bump(stats, Stat::LeaseStale);
            return xdp_action::XDP_DROP;
        }
        let (mac_hi, mac_lo) = vip_mac(v);
        // Resize to exactly Ethernet (+ tag) + IPv6 + NA (drops NS options, adds room for
        // the target link-layer option when the NS had none).
        let want = off + 40 + NA_LEN;
        let delta = want as i64 - (end - data) as i64;
        if delta != 0 {
            // SAFETY: ctx is the program's context.
            if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } != 0 {
                bump(stats, Stat::NonTcp);
                return xdp_action::XDP_PASS;
            }
        }
        // Packet pointers are invalid after adjust_tail: re-derive and re-check.
        let data = ctx.data();
        let end = ctx.data_end();
        let Some(ip) = ptr_at(data, end, off, 40 + NA_LEN) else {
            return xdp_action::XDP_DROP;
        };
        let icmp = ip + 40;
        // Ethernet: to the solicitor, from the VIP's MAC.
        store_raw32(data, load_raw32(data + 6));
        store_raw16(data + 4, load_raw16(data + 10));
        store_raw32(data + 6, mac_hi);
        store_raw16(data + 10, mac_lo);
        // IPv6: version 6, payload = NA, hop limit 255; to the solicitor, from the target.
        store_raw32(ip, u32::from_ne_bytes([0x60, 0, 0, 0]));
        store_raw16(ip + 4, (NA_LEN as u16).to_be());
        // SAFETY: `ip..ip + 40` is inside the packet (checked above).
        unsafe {
            let dst = (ip + 24) as *mut u32;
            let mut src = [0u32; 4];
            copy16(src.as_mut_ptr(), ip + 8);
            dst.write_unaligned(src[0]);
            dst.add(1).write_unaligned(src[1]);
            dst.add(2).write_unaligned(src[2]);
            dst.add(3).write_unaligned(src[3]);
        }
        store_raw16(ip + 6, u16::from_ne_bytes([IPPROTO_ICMPV6, 255]));
        let t = icmp + 8;
        store_raw32(ip + 8, load_raw32(t));
        store_raw32(ip + 12, load_raw32(t + 4));
        store_raw32(ip + 16, load_raw32(t + 8));
        store_raw32(ip + 20, load_raw32(t + 12));
        // ICMPv6 NA: type, code, checksum 0 for now, flags, target (unchanged), option 2.
        store_raw32(icmp, u32::from_ne_bytes([ND_NA, 0, 0, 0]));
        store_raw32(icmp + 4, NA_FLAGS_RAW);
        store_raw16(icmp + 24, u16::from_ne_bytes([2, 1]));
        store_raw16(icmp + 26, mac_hi as u16);
        store_raw16(icmp + 28, (mac_hi >> 16) as u16);
        store_raw16(icmp + 30, mac_lo);
        // Checksum: pseudo-header (addresses, length, next header) + the message, summed
        // as native words (the one's complement sum is byte-order independent).
        let mut sum: u64 = u64::from(u32::from_ne_bytes([0, 0, 0, NA_LEN as u8]))
            + u64::from(u32::from_ne_bytes([0, 0, 0, IPPROTO_ICMPV6]));
        let mut i = 0;
        while i < 32 {
            sum += u64::from(load_raw32(ip + 8 + i));
            sum += u64::from(load_raw32(icmp + i));
            i += 4;
        }
        sum = (sum & 0xffff_ffff) + (sum >> 32);
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        store_raw16(icmp + 2, !(sum as u16));
        bump(stats, Stat::NdAnswered);
        xdp_action::XDP_TX
    }

    /// Transmits the frame it is run on: `BPF_PROG_TEST_RUN` with live frames on the
    /// target interface sends announcements from the NIC's own transmit path.
    #[xdp]
    pub fn xdp_announce(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_TX
    }

    /// Outbound connection accounting (TC egress). Same parser and fast path as
    /// `xdp_ingress`; every TCP destination port counts. Always `TC_ACT_OK`.
    #[classifier]
    pub fn tc_egress(ctx: TcContext) -> i32 {
        if let Ok(seg) = parse(ctx.data(), ctx.data_end()) {
            let f = seg.flags;
            // Only connections to the counted ports (remote MTAs: 25, 465, 587 by default):
            // the cluster's own links and other traffic are not outbound mail connections.
            // The egress copy's PORTS is set once at load, so every tracked flow's closes
            // (and userspace expiry RSTs) pass this check too.
            let counted = match PORTS.get(0) {
                Some(p) => p.contains(load_be16(seg.th + 2)),
                None => false,
            };
            if counted && (f & (TCP_FIN | TCP_RST) != 0 || f & (TCP_SYN | TCP_ACK) == TCP_SYN) {
                egress(&seg);
            }
        }
        TC_ACT_OK
    }

    // The egress keys are written with volatile 4-byte stores: LLVM otherwise merges
    // adjacent word stores into 8-byte ones, and in this program's frame they land at
    // 4-byte offsets, which the verifier rejects on the stack.

    /// Writes `n` words from packet address `src` to `dst`, one volatile store each.
    ///
    /// # Safety
    /// `dst` valid for `n` words, 4-aligned; `src..src + 4n` inside the packet.
    #[inline(always)]
    unsafe fn copy_words_volatile(dst: *mut u32, src: usize, n: usize) {
        let mut i = 0;
        while i < n {
            // SAFETY: per the contract above.
            unsafe { dst.add(i).write_volatile(load_raw32(src + 4 * i)) };
            i += 1;
        }
    }

    #[inline(always)]
    fn out_key_v4(s: &Seg) -> FlowKeyV4 {
        let mut k = MaybeUninit::<FlowKeyV4>::uninit();
        let w = k.as_mut_ptr() as *mut u32;
        // SAFETY: FlowKeyV4 is 12 bytes, 4-aligned, no padding: saddr, daddr (adjacent in
        // the IPv4 header, inside the packet per `parse`), then the two host-order ports.
        unsafe {
            copy_words_volatile(w, s.ip + 12, 2);
            let ports = u32::from(load_be16(s.th)) | (u32::from(load_be16(s.th + 2)) << 16);
            w.add(2).write_volatile(ports);
            k.assume_init()
        }
    }

    #[inline(always)]
    fn out_key_v6(s: &Seg) -> FlowKeyV6 {
        let mut k = MaybeUninit::<FlowKeyV6>::uninit();
        let w = k.as_mut_ptr() as *mut u32;
        // SAFETY: as `out_key_v4`; FlowKeyV6 is 36 bytes (addresses at ip + 8..40).
        unsafe {
            copy_words_volatile(w, s.ip + 8, 8);
            let ports = u32::from(load_be16(s.th)) | (u32::from(load_be16(s.th + 2)) << 16);
            w.add(8).write_volatile(ports);
            k.assume_init()
        }
    }

    #[inline(always)]
    fn dest_key(s: &Seg) -> SourceKey {
        let mut k = MaybeUninit::<SourceKey>::uninit();
        let w = k.as_mut_ptr() as *mut u32;
        // SAFETY: as in `source_key`; the destination is inside the packet (`parse`).
        unsafe {
            if s.v6 {
                w.write_volatile(u32::from(AF_INET6));
                copy_words_volatile(w.add(1), s.ip + 24, 4);
            } else {
                w.write_volatile(u32::from(AF_INET));
                w.add(1).write_volatile(load_raw32(s.ip + 16));
                w.add(2).write_volatile(0);
                w.add(3).write_volatile(0);
                w.add(4).write_volatile(0);
            }
            k.assume_init()
        }
    }

    /// A local SYN opens an outbound flow (once); a local FIN/RST closes it (once: only
    /// the delete that succeeds counts).
    #[inline(always)]
    fn egress(s: &Seg) {
        let Some(stats) = STATS.get_ptr_mut(0) else {
            return;
        };
        if s.flags & (TCP_FIN | TCP_RST) != 0 {
            let removed = if s.v6 {
                OUT_FLOWS_V6.remove(&out_key_v6(s))
            } else {
                OUT_FLOWS_V4.remove(&out_key_v4(s))
            };
            if removed.is_err() {
                bump(stats, Stat::OutFinRstNoFlow);
                return;
            }
            bump(stats, Stat::OutClosed);
            match DESTINATIONS.get_ptr_mut(dest_key(s)) {
                // SAFETY: this CPU's value of a live entry.
                Some(c) => unsafe { (*c).closed += 1 },
                None => bump(stats, Stat::DestEvicted),
            }
            return;
        }
        bump(stats, Stat::OutSyn);
        let value = FlowValue {
            netblock: 0,
            _pad: 0,
            // SAFETY: helper without preconditions.
            opened_ns: unsafe { bpf_ktime_get_coarse_ns() },
        };
        let inserted = if s.v6 {
            OUT_FLOWS_V6.insert(&out_key_v6(s), &value, BPF_NOEXIST as u64)
        } else {
            OUT_FLOWS_V4.insert(&out_key_v4(s), &value, BPF_NOEXIST as u64)
        };
        match inserted {
            Ok(()) => {}
            Err(e) if e == -EEXIST => {
                bump(stats, Stat::OutSynRetransmit);
                return;
            }
            Err(e) if e == -E2BIG => {
                bump(stats, Stat::OutFlowMapFull);
                return;
            }
            Err(_) => {
                bump(stats, Stat::OutFlowInsertFailed);
                return;
            }
        }
        bump(stats, Stat::OutOpened);
        let dkey = dest_key(s);
        if let Some(c) = DESTINATIONS.get_ptr_mut(&dkey) {
            // SAFETY: this CPU's value of a live entry.
            unsafe { (*c).opened += 1 };
            return;
        }
        let first = SourceCounts {
            opened: 1,
            closed: 0,
        };
        match DESTINATIONS.insert(&dkey, &first, BPF_NOEXIST as u64) {
            Ok(()) => {}
            Err(e) if e == -EEXIST => match DESTINATIONS.get_ptr_mut(&dkey) {
                // SAFETY: as above.
                Some(c) => unsafe { (*c).opened += 1 },
                None => bump(stats, Stat::DestMapInsertFailed),
            },
            Err(_) => bump(stats, Stat::DestMapInsertFailed),
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
