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
/// text. Release builds only, and only where the linker is lld, which rustc uses
/// by default on this target since 1.90 (the linker script below uses lld's `INSERT`).
/// CAIRN_LINK_ORDER=0 turns it off.
///
/// link/client-agent.order names the functions by their mangled symbols, whose hashes
/// change with the compiler, with every crate's version and features (building cairn
/// together with loadgen changes three crates' features, and so every hash), and with
/// code changes (ThinLTO's `.llvm.N` suffixes). A linker script puts the input sections
/// of those exact names first, in the file's order, then every section whose name
/// matches one of them with the hashes left out: when the exact names are stale, the
/// client agent's code is still in the block, with other instantiations of the same
/// generic functions beside it (measured: a client agent maps 1.3 MiB of code with
/// current names, 3.0 MiB with a third of them current, 5.1 MiB without the layout).
/// The file records a fingerprint of what the hashes come from (`rustc -vV`,
/// Cargo.lock, the manifests); a build with other inputs warns that link/order.sh should
/// be run again. Code changes are not fingerprinted: `benches/gossip_vs_serf.sh` prints
/// how many of the names the measured binary has.
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
    let Ok(text) = std::fs::read_to_string(&order) else {
        return;
    };
    if !wanted || !release || !links_with_lld(target, &rustc_vv) {
        return;
    }
    let names: Vec<&str> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    // A function LLVM deems cold (one that only runs on a slow path, e.g. a Vec's growth)
    // is in `.text.unlikely.<name>` (115 of the file's names were: outside the block,
    // a client agent mapped 64 KiB windows of .text for them).
    let mut script = String::from("SECTIONS {\n  .text.agent : {\n");
    for name in &names {
        let n = any_thinlto_suffix(name);
        script.push_str(&format!("    *(.text.{n} .text.unlikely.{n})\n"));
    }
    let mut seen = std::collections::HashSet::new();
    for name in &names {
        let p = without_hashes(name);
        if seen.insert(p.clone()) {
            script.push_str(&format!("    *(.text.{p} .text.unlikely.{p})\n"));
        }
    }
    script.push_str("  }\n}\nINSERT BEFORE .text;\n");
    let out =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("client-agent.ld");
    std::fs::write(&out, script).expect("writing the linker script to OUT_DIR");
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", out.display());
    // Functions merged with another (LLVM's MergeFunctions) or in a section not named
    // after them are not caught by the script: ordered by symbol, they come first in .text,
    // right after the block.
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");

    let recorded = text
        .lines()
        .find_map(|l| l.strip_prefix("# inputs: "))
        .unwrap_or_default();
    let now = format!("{:016x}", fingerprint(root, &rustc_vv));
    if recorded != now {
        println!(
            "cargo:warning=link/client-agent.order was made for other inputs (rustc, \
             Cargo.lock or a manifest changed: {recorded} != {now}); most of its exact names \
             no longer match and client agents map about twice the code: run link/order.sh"
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

/// A symbol name with ThinLTO's `.llvm.<N>` suffix, if any, as `.llvm.*`. N is a hash of
/// the codegen unit's module and changes between builds of the same code: in another
/// directory (a user's checkout, a git worktree; the module holds the debug info's
/// absolute paths) and when the link arguments change (a new layout file). Measured: all
/// 278 such names of the committed file were stale in builds of the same commit in
/// /work/main and in a worktree, and in the worktree a client agent's RSS was 6.5 MiB,
/// 5.7 with this glob. The rest of the name, with its hash, still names one function.
fn any_thinlto_suffix(name: &str) -> String {
    match name.find(".llvm.") {
        Some(i) => format!("{}.llvm.*", &name[..i]),
        None => name.to_string(),
    }
}

/// A symbol name as a linker-script glob with its hashes (and ThinLTO suffix) replaced by
/// `*`: legacy mangling's trailing `17h<16 hex digits>E`, v0's crate disambiguators.
fn without_hashes(name: &str) -> String {
    let name = match name.find(".llvm.") {
        Some(i) => &name[..i],
        None => name,
    };
    if let Some(stem) = name.strip_prefix("_ZN") {
        // Legacy mangling ends in 17h<16 hex digits>E.
        if name.len() > 20 && name.ends_with('E') && name[name.len() - 20..].starts_with("17h") {
            return format!("_ZN{}*", &stem[..stem.len() - 17]);
        }
        return name.to_string();
    }
    if name.starts_with("_R") {
        // v0: crate disambiguators are Cs<base-62>_.
        let mut out = String::new();
        let b = name.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'C' && i + 1 < b.len() && b[i + 1] == b's' {
                let mut j = i + 2;
                while j < b.len() && b[j].is_ascii_alphanumeric() {
                    j += 1;
                }
                if j < b.len() && b[j] == b'_' {
                    out.push_str("Cs*_");
                    i = j + 1;
                    continue;
                }
            }
            out.push(b[i] as char);
            i += 1;
        }
        out.push('*');
        return out;
    }
    name.to_string()
}
