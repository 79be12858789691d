//! The NCCL unique-id exchange through a file (one process per GPU), which needs no GPU: rank 0
//! writes the 128-byte id atomically, the other ranks wait for it, and a missing file times out
//! with a clear error. Joining an NCCL group needs GPUs and is covered by docs/gpu.md.
#![cfg(feature = "cuda")]

use std::time::{Duration, Instant};

use cudarc::nccl::Id;
use koala_kernels::comm::{read_id_file, write_id_file};

#[test]
fn id_file_round_trip_between_a_writer_and_waiting_readers() {
    let dir = std::env::temp_dir().join(format!("koala-nccl-id-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nccl.id");
    let _ = std::fs::remove_file(&path);
    let mut internal = [0 as std::ffi::c_char; 128];
    for (i, c) in internal.iter_mut().enumerate() {
        *c = (i as u8).wrapping_mul(37) as std::ffi::c_char;
    }
    let id = Id::uninit(internal);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || read_id_file(&path, Duration::from_secs(20)).unwrap())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(150));
    write_id_file(&path, &id).unwrap();
    for r in readers {
        assert_eq!(r.join().unwrap().internal(), id.internal());
    }
    assert!(
        !path.with_extension("tmp").exists(),
        "the temporary file was renamed away"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_or_bad_id_file_is_an_error() {
    let dir = std::env::temp_dir().join(format!("koala-nccl-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let t0 = Instant::now();
    let e = read_id_file(&dir.join("never"), Duration::from_millis(200))
        .err()
        .unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(200));
    assert!(e.to_string().contains("timed out"), "{e}");
    std::fs::write(dir.join("short"), [1u8; 5]).unwrap();
    let e = read_id_file(&dir.join("short"), Duration::from_millis(200))
        .err()
        .unwrap();
    assert!(e.to_string().contains("5 bytes"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
