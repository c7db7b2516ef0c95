//! Compiles the BPF programs in `bpf/*.bpf.c` with clang (`-target bpf -O2 -g`, BTF map definitions) into
//! `$OUT_DIR`, from where `src/bpf/mod.rs` embeds them with `include_bytes!`.
//!
//! Headers: `<linux/bpf.h>` etc. from linux-libc-dev and `<bpf/bpf_helpers.h>` from libbpf-dev; no
//! vmlinux.h is needed because the programs use only UAPI types.

use std::path::PathBuf;
use std::process::Command;

/// The BPF programs, `bpf/NAME.bpf.c` each.
const PROGRAMS: &[&str] = &["profiler"];

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = std::env::var("KILN_BPF_CLANG").unwrap_or_else(|_| "clang".to_string());
    // `asm/types.h` lives under the multiarch include directory on Debian.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_string());
    let (multiarch, target_define) = match arch.as_str() {
        "aarch64" => ("aarch64-linux-gnu", "__TARGET_ARCH_arm64"),
        _ => ("x86_64-linux-gnu", "__TARGET_ARCH_x86"),
    };
    println!("cargo:rerun-if-env-changed=KILN_BPF_CLANG");
    let bpf_dir = manifest_dir.join("bpf");
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    for program in PROGRAMS {
        let source = bpf_dir.join(format!("{program}.bpf.c"));
        let object = out_dir.join(format!("{program}.bpf.o"));
        println!("cargo:rerun-if-changed={}", source.display());
        let output = Command::new(&clang)
            .args(["-target", "bpf", "-O2", "-g", "-mcpu=v3", "-Wall", "-Werror"])
            .arg(format!("-D{target_define}"))
            .arg(format!("-I/usr/include/{multiarch}"))
            .arg("-c")
            .arg(&source)
            .arg("-o")
            .arg(&object)
            .output();
        match output {
            Ok(output) if output.status.success() => {}
            Ok(output) => panic!(
                "clang failed to compile {}:\n{}\n(needs Debian packages clang, libbpf-dev and linux-libc-dev)",
                source.display(),
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => panic!(
                "cannot run `{clang}` to compile {}: {error} (install the Debian package clang, or set KILN_BPF_CLANG)",
                source.display()
            ),
        }
    }
}
