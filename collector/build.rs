//! Builds the kernel programs (collector-ebpf, bpfel-unknown-none, nightly + bpf-linker) into
//! OUT_DIR so the collector binary embeds them.
fn main() -> aya_build::Result<()> {
    // bpf-linker links with the LLVM it was built against (llvm-22); keep that LLVM's tools first.
    let path = std::env::var("PATH").unwrap_or_default();
    if std::path::Path::new("/usr/lib/llvm-22/bin").exists()
        && !path.starts_with("/usr/lib/llvm-22/bin")
    {
        // SAFETY: build scripts are single-threaded.
        unsafe { std::env::set_var("PATH", format!("/usr/lib/llvm-22/bin:{path}")) };
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../collector-ebpf");
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed={root}/common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "flowlens-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
