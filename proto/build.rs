//! Generates the `koala.trainer.v1` messages, client and server with tonic/prost, plus the file
//! descriptor set that server reflection serves. `protoc` comes from `protoc-bin-vendored` unless
//! `PROTOC` is set, so a fresh machine needs nothing installed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let proto = "koala/trainer/v1/trainer.proto";
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("koala_trainer_v1_descriptor.bin"))
        .compile_protos(&[proto], &["."])?;
    println!("cargo:rerun-if-changed={proto}");
    Ok(())
}
