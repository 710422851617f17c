fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("watchman_descriptor.bin"))
        .compile_protos(
            &["watchman/v1/watchman.proto", "watchman/v1/jobs.proto"],
            &["."],
        )?;
    println!("cargo:rerun-if-changed=watchman/v1/watchman.proto");
    println!("cargo:rerun-if-changed=watchman/v1/jobs.proto");
    Ok(())
}
