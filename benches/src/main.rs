//! `duraplane-bench`: runs the benchmark scenarios (see `cargo xtask bench`).
fn main() {
    println!("no scenarios yet");
}
