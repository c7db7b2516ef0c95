//! Compiles every `.proto` under `proto/` with protox (pure Rust), so that no
//! `protoc` binary is needed on PATH.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "kiln/v1/kiln.proto",
        "kiln/v1/cluster.proto",
        "google/pprof/profile.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let file_descriptors = protox::compile(protos, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(file_descriptors)?;
    Ok(())
}
