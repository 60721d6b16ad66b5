//! Duraplane's eBPF programs.
//!
//! `xdp_ingress` — inbound connection accounting per policy netblock (DESIGN.md "eBPF data
//! plane"). The layouts of every map key/value are in `duraplane-common`.
//!
//! Fast path: every packet costs one per-CPU stats lookup (inlined by the verifier); TCP
//! packets to a counted port cost one more array lookup (port bitmap). Only SYN (without
//! ACK) and FIN/RST to a counted port touch the hash maps.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The BPF target has no compare-and-swap, so `AtomicU64::fetch_add` does not exist there;
// the intrinsic lowers to the BPF atomic add (RUSTC_BOOTSTRAP is set by build.rs).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod programs {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};

    use aya_ebpf::{
        bindings::{BPF_NOEXIST, xdp_action},
        helpers::bpf_ktime_get_ns,
        macros::{map, xdp},
        maps::{Array, HashMap, LpmTrie, LruPerCpuHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
        programs::XdpContext,
    };
    use duraplane_common::{
        ACTION_DROP, AF_INET, AF_INET6, DROP_EVENTS_BYTES, DropEvent, EXPIRE_MAGIC, ExpireMeta,
        FLOWS_MAX_ENTRIES, FlowKey, FlowValue, MAX_NETBLOCKS, NETBLOCK_PREFIXES_MAX_ENTRIES,
        NetblockLimit, NetblockStats, PortSet, SOURCES_MAX_ENTRIES, SourceCounts, SourceKey, Stat,
        StatsBlock,
    };

    // Map definitions. Sizes are the defaults of duraplane-common; userspace may override
    // FLOWS/SOURCES before load. Minimum kernels: ARRAY/HASH 3.19, PERCPU_ARRAY 4.6,
    // LPM_TRIE 4.11, LRU_PERCPU_HASH 4.10, RINGBUF 5.8; the program uses only v1 instructions (atomic
    // add, no fetch).

    /// Open connections; plain HASH (not LRU) so a flow is never evicted behind our back:
    /// when full, new SYNs pass uncounted and `flow_map_full` counts them.
    #[map]
    static FLOWS: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(FLOWS_MAX_ENTRIES, 0);

    /// Per-source opened/closed, per CPU. LRU: spoofed sources may evict real ones; a close
    /// that finds its source gone is counted as `source_evicted`.
    #[map]
    static SOURCES: LruPerCpuHashMap<SourceKey, SourceCounts> =
        LruPerCpuHashMap::with_max_entries(SOURCES_MAX_ENTRIES, 0);

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

    const ETH_HLEN: usize = 14;
    const ETH_P_IP: u16 = 0x0800;
    const ETH_P_IPV6: u16 = 0x86DD;
    const ETH_P_8021Q: u16 = 0x8100;
    const IPPROTO_TCP: u8 = 6;
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

    type Stats = *mut StatsBlock;

    #[inline(always)]
    fn bump(stats: Stats, s: Stat) {
        // SAFETY: `stats` is this CPU's STATS value; `s` < STAT_COUNT by construction.
        unsafe { (*stats).counters[s as usize] += 1 };
    }

    /// Pointer to `len` bytes at `off` into the packet, if they are inside it. The explicit
    /// `data + off + len <= data_end` comparison is what the verifier needs to see.
    #[inline(always)]
    fn ptr_at(ctx: &XdpContext, off: usize, len: usize) -> Option<usize> {
        let start = ctx.data();
        let end = ctx.data_end();
        if start + off + len > end {
            return None;
        }
        Some(start + off)
    }

    #[inline(always)]
    fn load_u8(p: usize) -> u8 {
        // SAFETY: bounds were checked by `ptr_at`.
        unsafe { *(p as *const u8) }
    }

    #[inline(always)]
    fn load_be16(p: usize) -> u16 {
        // SAFETY: bounds were checked by `ptr_at`; unaligned read of 2 bytes.
        u16::from_be(unsafe { core::ptr::read_unaligned(p as *const u16) })
    }

    /// The parsed facts about one TCP packet the accounting cares about.
    struct Tcp {
        family: u8,
        saddr: [u8; 16],
        daddr: [u8; 16],
        sport: u16,
        dport: u16,
        flags: u8,
    }

    /// Ingress accounting. Always passes, except SYNs of a netblock over its limit with
    /// action drop.
    #[xdp]
    pub fn xdp_ingress(ctx: XdpContext) -> u32 {
        let Some(stats) = STATS.get_ptr_mut(0) else {
            return xdp_action::XDP_PASS;
        };
        bump(stats, Stat::Packets);
        let tcp = match parse(&ctx, stats) {
            Some(t) => t,
            None => return xdp_action::XDP_PASS,
        };
        let counted = match PORTS.get(0) {
            Some(p) => p.contains(tcp.dport),
            None => false,
        };
        if !counted {
            // Userspace expiry of a flow whose port is no longer counted still has to
            // reach the close path; one flag test on this path.
            if tcp.flags & TCP_RST != 0 && is_expiry(&ctx) {
                close(&tcp, stats, true);
            } else {
                bump(stats, Stat::UncountedPort);
            }
            return xdp_action::XDP_PASS;
        }
        if tcp.flags & (TCP_FIN | TCP_RST) != 0 {
            // SYN+FIN / SYN+RST never open a connection in Linux: treat as close.
            close(&tcp, stats, is_expiry(&ctx));
            return xdp_action::XDP_PASS;
        }
        if tcp.flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            return syn(&tcp, stats);
        }
        xdp_action::XDP_PASS
    }

    /// Ethernet (+ one 802.1Q tag), IPv4/IPv6, TCP. `None` = pass (already counted).
    #[inline(always)]
    fn parse(ctx: &XdpContext, stats: Stats) -> Option<Tcp> {
        let Some(eth) = ptr_at(ctx, 0, ETH_HLEN) else {
            bump(stats, Stat::Truncated);
            return None;
        };
        let mut ethertype = load_be16(eth + 12);
        let mut off = ETH_HLEN;
        if ethertype == ETH_P_8021Q {
            let Some(tag) = ptr_at(ctx, ETH_HLEN, 4) else {
                bump(stats, Stat::Truncated);
                return None;
            };
            ethertype = load_be16(tag + 2);
            off = ETH_HLEN + 4;
        }
        let mut t = Tcp {
            family: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            sport: 0,
            dport: 0,
            flags: 0,
        };
        let l4 = if ethertype == ETH_P_IP {
            parse_v4(ctx, stats, off, &mut t)?
        } else if ethertype == ETH_P_IPV6 {
            parse_v6(ctx, stats, off, &mut t)?
        } else {
            bump(stats, Stat::NonIp);
            return None;
        };
        let Some(th) = ptr_at(ctx, l4, TCP_HLEN) else {
            bump(stats, Stat::Truncated);
            return None;
        };
        t.sport = load_be16(th);
        t.dport = load_be16(th + 2);
        t.flags = load_u8(th + 13);
        Some(t)
    }

    /// Returns the TCP header offset.
    #[inline(always)]
    fn parse_v4(ctx: &XdpContext, stats: Stats, off: usize, t: &mut Tcp) -> Option<usize> {
        let Some(ip) = ptr_at(ctx, off, 20) else {
            bump(stats, Stat::Truncated);
            return None;
        };
        let ver_ihl = load_u8(ip);
        let ihl = ((ver_ihl & 0x0f) as usize) * 4;
        if ver_ihl >> 4 != 4 || ihl < 20 {
            bump(stats, Stat::Malformed);
            return None;
        }
        if load_u8(ip + 9) != IPPROTO_TCP {
            bump(stats, Stat::NonTcp);
            return None;
        }
        // Non-first fragments have no TCP header; first fragments with MF are passed too
        // (a SYN is never fragmented by a sane stack).
        if load_be16(ip + 6) & 0x3fff != 0 {
            bump(stats, Stat::Fragments);
            return None;
        }
        t.family = AF_INET;
        // SAFETY: the 20-byte header is inside the packet (checked above).
        unsafe {
            core::ptr::copy_nonoverlapping((ip + 12) as *const u8, t.saddr.as_mut_ptr(), 4);
            core::ptr::copy_nonoverlapping((ip + 16) as *const u8, t.daddr.as_mut_ptr(), 4);
        }
        // IPv4 options are skipped, not parsed.
        Some(off + ihl)
    }

    /// Returns the TCP header offset. Walks at most 3 extension headers (hop-by-hop,
    /// routing, destination options, or an atomic fragment header — any combination);
    /// longer chains are passed and counted as `ipv6_ext_unsupported`.
    #[inline(always)]
    fn parse_v6(ctx: &XdpContext, stats: Stats, off: usize, t: &mut Tcp) -> Option<usize> {
        let Some(ip) = ptr_at(ctx, off, 40) else {
            bump(stats, Stat::Truncated);
            return None;
        };
        if load_u8(ip) >> 4 != 6 {
            bump(stats, Stat::Malformed);
            return None;
        }
        let mut nh = load_u8(ip + 6);
        // SAFETY: the 40-byte header is inside the packet (checked above).
        unsafe {
            core::ptr::copy_nonoverlapping((ip + 8) as *const u8, t.saddr.as_mut_ptr(), 16);
            core::ptr::copy_nonoverlapping((ip + 24) as *const u8, t.daddr.as_mut_ptr(), 16);
        }
        t.family = AF_INET6;
        let mut l4 = off + 40;
        let mut i = 0;
        while i < 3 {
            i += 1;
            if nh == IPPROTO_TCP {
                return Some(l4);
            }
            if nh == IPV6_FRAGMENT {
                let Some(fh) = ptr_at(ctx, l4, 8) else {
                    bump(stats, Stat::Truncated);
                    return None;
                };
                // Offset (13 bits) or M flag set: a real fragment.
                if load_be16(fh + 2) & 0xfff9 != 0 {
                    bump(stats, Stat::Fragments);
                    return None;
                }
                nh = load_u8(fh);
                l4 += 8;
            } else if nh == IPV6_HOPOPTS || nh == IPV6_ROUTING || nh == IPV6_DSTOPTS {
                let Some(eh) = ptr_at(ctx, l4, 2) else {
                    bump(stats, Stat::Truncated);
                    return None;
                };
                nh = load_u8(eh);
                l4 += (load_u8(eh + 1) as usize + 1) * 8;
            } else {
                bump(stats, Stat::NonTcp);
                return None;
            }
        }
        if nh == IPPROTO_TCP {
            return Some(l4);
        }
        if nh == IPV6_FRAGMENT || nh == IPV6_HOPOPTS || nh == IPV6_ROUTING || nh == IPV6_DSTOPTS {
            bump(stats, Stat::Ipv6ExtUnsupported);
        } else {
            bump(stats, Stat::NonTcp);
        }
        None
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

    #[inline(always)]
    fn flow_key(t: &Tcp) -> FlowKey {
        FlowKey {
            family: t.family,
            _pad: [0; 3],
            saddr: t.saddr,
            daddr: t.daddr,
            sport: t.sport,
            dport: t.dport,
        }
    }

    #[inline(always)]
    fn source_key(t: &Tcp) -> SourceKey {
        SourceKey {
            family: t.family,
            _pad: [0; 3],
            addr: t.saddr,
        }
    }

    /// Longest-prefix match of the source; 0 when no netblock covers it.
    #[inline(always)]
    fn classify(t: &Tcp) -> u32 {
        let id = if t.family == AF_INET {
            let a = [t.saddr[0], t.saddr[1], t.saddr[2], t.saddr[3]];
            NETBLOCKS_V4.get(Key::new(32, a)).copied()
        } else {
            NETBLOCKS_V6.get(Key::new(128, t.saddr)).copied()
        };
        match id {
            Some(id) if id < MAX_NETBLOCKS => id,
            _ => 0,
        }
    }

    #[inline(always)]
    fn syn(t: &Tcp, stats: Stats) -> u32 {
        bump(stats, Stat::Syn);
        let key = flow_key(t);
        if FLOWS.get_ptr(&key).is_some() {
            bump(stats, Stat::SynRetransmit);
            return xdp_action::XDP_PASS;
        }
        let nb = classify(t);
        let nbs = NB_STATS.get_ptr_mut(nb);
        if let Some(s) = nbs {
            // SAFETY: this CPU's value of an existing array slot.
            unsafe { (*s).syn += 1 };
        }
        let Some(local) = LOCAL.get_ptr_mut(nb) else {
            return xdp_action::XDP_PASS;
        };
        if let Some(lim) = LIMITS.get(nb) {
            if lim.limit != 0 {
                // SAFETY: array values are 8-byte aligned and live as long as the map.
                // A plain aligned 8-byte load is atomic on every BPF JIT; BPF load-acquire
                // needs cpu v4, which bpf-linker's `generic` cpu does not emit.
                let l = unsafe { core::ptr::read_volatile(local) };
                let r = REMOTE.get(nb).copied().unwrap_or(0);
                // Check-then-add is not one atomic step: concurrent SYNs on different CPUs
                // may overshoot the limit by at most (CPUs − 1).
                if l.saturating_add(r) >= lim.limit {
                    if lim.action == ACTION_DROP {
                        bump(stats, Stat::Dropped);
                        if let Some(s) = nbs {
                            // SAFETY: as above.
                            unsafe { (*s).dropped += 1 };
                        }
                        drop_event(t, nb, stats);
                        return xdp_action::XDP_DROP;
                    }
                    // Count-only: the connection is real, so it is still tracked and
                    // counted; the excess is reported.
                    bump(stats, Stat::OverLimit);
                    if let Some(s) = nbs {
                        // SAFETY: as above.
                        unsafe { (*s).over_limit += 1 };
                    }
                }
            }
        }
        let value = FlowValue {
            netblock: nb,
            _pad: 0,
            // SAFETY: helper without preconditions.
            opened_ns: unsafe { bpf_ktime_get_ns() },
        };
        match FLOWS.insert(&key, &value, BPF_NOEXIST as u64) {
            Ok(()) => {}
            Err(e) if e == -EEXIST => {
                // The same SYN raced on another CPU and won.
                bump(stats, Stat::SynRetransmit);
                return xdp_action::XDP_PASS;
            }
            Err(e) if e == -E2BIG => {
                bump(stats, Stat::FlowMapFull);
                return xdp_action::XDP_PASS;
            }
            Err(_) => {
                bump(stats, Stat::FlowInsertFailed);
                return xdp_action::XDP_PASS;
            }
        }
        // SAFETY: see above.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(local, 1) };
        bump(stats, Stat::Opened);
        if let Some(s) = nbs {
            // SAFETY: as above.
            unsafe { (*s).opened += 1 };
        }
        source_opened(t, stats);
        xdp_action::XDP_PASS
    }

    #[inline(always)]
    fn source_opened(t: &Tcp, stats: Stats) {
        let skey = source_key(t);
        if let Some(c) = SOURCES.get_ptr_mut(&skey) {
            // SAFETY: this CPU's value of a live entry.
            unsafe { (*c).opened += 1 };
            return;
        }
        let first = SourceCounts {
            opened: 1,
            closed: 0,
        };
        match SOURCES.insert(&skey, &first, BPF_NOEXIST as u64) {
            Ok(()) => {}
            Err(e) if e == -EEXIST => match SOURCES.get_ptr_mut(&skey) {
                // SAFETY: as above.
                Some(c) => unsafe { (*c).opened += 1 },
                None => bump(stats, Stat::SourceMapInsertFailed),
            },
            Err(_) => bump(stats, Stat::SourceMapInsertFailed),
        }
    }

    #[inline(always)]
    fn drop_event(t: &Tcp, nb: u32, stats: Stats) {
        match DROP_EVENTS.reserve::<DropEvent>(0) {
            Some(mut e) => {
                e.write(DropEvent {
                    // SAFETY: helper without preconditions.
                    ts_ns: unsafe { bpf_ktime_get_ns() },
                    saddr: t.saddr,
                    netblock: nb,
                    dport: t.dport,
                    family: t.family,
                    _pad: 0,
                });
                e.submit(0);
            }
            None => bump(stats, Stat::RingbufFull),
        }
    }

    /// Client FIN/RST (or userspace expiry): forget the flow; only the CPU whose delete
    /// succeeded decrements, so a close counts exactly once.
    #[inline(always)]
    fn close(t: &Tcp, stats: Stats, expiry: bool) {
        let key = flow_key(t);
        let nb = match FLOWS.get_ptr(&key) {
            // SAFETY: a live entry; copied out before the delete.
            Some(v) => unsafe { (*v).netblock },
            None => {
                bump(stats, Stat::FinRstNoFlow);
                return;
            }
        };
        if FLOWS.remove(&key).is_err() {
            bump(stats, Stat::FinRstNoFlow);
            return;
        }
        bump(
            stats,
            if expiry {
                Stat::Expired
            } else {
                Stat::FinRstClosed
            },
        );
        if let Some(local) = LOCAL.get_ptr_mut(nb) {
            // bpf-linker targets cpu `generic` (v1): atomic add exists, fetch-add does not,
            // so underflow is checked with a plain read first (only a reset map or a bug
            // can get here with 0; the read/add window cannot make a correct count wrap).
            // SAFETY: array values are 8-byte aligned and live as long as the map.
            if unsafe { core::ptr::read_volatile(local) } == 0 {
                bump(stats, Stat::LocalUnderflow);
            } else {
                // Adding 2^64 − 1 is subtracting 1.
                // SAFETY: as above.
                unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(local, u64::MAX) };
            }
        }
        if let Some(s) = NB_STATS.get_ptr_mut(nb) {
            // SAFETY: this CPU's value of an existing array slot.
            unsafe { (*s).closed += 1 };
        }
        match SOURCES.get_ptr_mut(source_key(t)) {
            // SAFETY: this CPU's value of a live entry.
            Some(c) => unsafe { (*c).closed += 1 },
            None => bump(stats, Stat::SourceEvicted),
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
