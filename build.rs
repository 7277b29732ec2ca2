//! Link flags for the `cairn` binary (its tests and benches link as before).
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.ends_with("-linux-gnu") {
        return;
    }
    // Relative relocations packed as DT_RELR (lld 15+ or GNU ld 2.38+; the binary then
    // needs glibc 2.36+ where it runs, instead of 2.34+). The binary is position
    // independent, so the dynamic loader relocates ~18,000 pointers at every start; as
    // RELA entries (24 bytes each) that table was 430 KiB, read in full by every process
    // and so resident in each agent; as RELR bitmaps it is 5 KiB.
    // Only where the build machine's glibc has DT_RELR (2.36+): the linker then also
    // records the GLIBC_ABI_DT_RELR version, so an older loader refuses the binary with
    // a clear message instead of running it unrelocated; and a build on an older
    // distribution (Ubuntu 22.04 has 2.35) must still run where it was built.
    if glibc_has_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    link_order(&target);
}

/// Whether this machine's glibc is 2.36 or newer (`getconf GNU_LIBC_VERSION` prints
/// e.g. "glibc 2.36"); false when that cannot be told.
fn glibc_has_relr() -> bool {
    let Ok(out) = std::process::Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 36)
}

/// The functions a client agent runs, laid out first and together (ARCHITECTURE.md,
/// "Client agents"): about 1 MiB of code instead of pages scattered over all 9 MiB of
/// text. Release builds only, and only where the linker is lld, which rustc uses by
/// default on this target since 1.90 (GNU ld has no such option). CAIRN_LINK_ORDER=0
/// turns it off.
///
/// The file names mangled symbols, whose hashes change with the compiler and with every
/// crate's version, source and features: names the binary no longer has are skipped, so
/// a stale file silently loses the saving. So the file records a fingerprint of what
/// those hashes come from (`rustc -vV`, Cargo.lock, the manifests), and a build with
/// other inputs warns that link/order.sh should be run again.
fn link_order(target: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let order = root.join("link/client-agent.order");
    println!("cargo:rerun-if-changed=link/client-agent.order");
    println!("cargo:rerun-if-env-changed=CAIRN_LINK_ORDER");
    for f in FINGERPRINTED {
        println!("cargo:rerun-if-changed={f}");
    }
    let wanted = std::env::var("CAIRN_LINK_ORDER").map_or(true, |v| v != "0");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let Some(rustc_vv) = rustc_version_verbose() else {
        return;
    };
    if !wanted || !release || !order.exists() || !links_with_lld(target, &rustc_vv) {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    let recorded = std::fs::read_to_string(&order)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("# inputs: ").map(str::to_owned))
        })
        .unwrap_or_default();
    let now = format!("{:016x}", fingerprint(root, &rustc_vv));
    if recorded != now {
        println!(
            "cargo:warning=link/client-agent.order was made for other inputs (rustc, \
             Cargo.lock or a manifest changed: {recorded} != {now}); most of its names no \
             longer match and client agents lose most of the saving: run link/order.sh"
        );
    }
}

/// Files whose changes rename the mangled symbols (with `rustc -vV`).
const FINGERPRINTED: [&str; 4] = [
    "Cargo.lock",
    "Cargo.toml",
    "net/Cargo.toml",
    "storage/Cargo.toml",
];

/// FNV-1a (64-bit) of `rustc -vV` and the [`FINGERPRINTED`] files, in that order;
/// link/order.sh computes the same.
fn fingerprint(root: &Path, rustc_vv: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(rustc_vv.as_bytes());
    for f in FINGERPRINTED {
        eat(&std::fs::read(root.join(f)).unwrap_or_default());
    }
    h
}

fn rustc_version_verbose() -> Option<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = std::process::Command::new(rustc).arg("-vV").output().ok()?;
    String::from_utf8(out.stdout).ok()
}

/// rustc's default linker is its own lld on x86_64 Linux from 1.90 on, unless a linker
/// was configured (`RUSTC_LINKER`, `-C linker`, `-C linker-features`).
fn links_with_lld(target: &str, rustc_vv: &str) -> bool {
    if target != "x86_64-unknown-linux-gnu" || std::env::var_os("RUSTC_LINKER").is_some() {
        return false;
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker") {
        return false;
    }
    let minor = rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("release: "))
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    matches!(minor, Some(m) if m >= 90)
}
