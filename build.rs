//! Link flags for the `cairn` binary (its tests and benches link as before).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Relative relocations packed as DT_RELR (lld 15+ or GNU ld 2.38+; the binary then
    // needs glibc 2.36+ where it runs, instead of 2.34+). The binary is position
    // independent, so the dynamic loader relocates ~18,000 pointers at every start; as
    // RELA entries (24 bytes each) that table was 430 KiB, read in full by every process
    // and so resident in each agent; as RELR bitmaps it is 5 KiB.
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.ends_with("-linux-gnu") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
