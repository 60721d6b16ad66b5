fn main() {
    println!("duraplane: {} bytes of eBPF", duraplane::EBPF_OBJECT.len());
}
