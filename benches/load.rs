//! Load throughput on the Koala-scale corpus (a bench binary, `harness = false`).
//!
//! ```sh
//! cargo bench --bench load                       # synthesises a Koala-scale corpus in a temp dir
//! cargo bench --bench load -- /path/to/corpus    # or loads an existing one (koala synth --scale koala)
//! KOALA_BENCH_SCALE=small cargo bench --bench load
//! ```
//!
//! Prints, for the same corpus in the same run:
//! - the I/O floor: reading every file and gunzipping it, nothing else (the baseline);
//! - the full load (`sources::load_dir`: split, parse, build the table), as wall time, rows/s and
//!   MB/s (decoded input), and its ratio to the floor;
//! - writing the table as Parquet;
//! - peak RSS of the load (`VmHWM`, reset after synthesis when the kernel allows it).
//!
//! Goal (issue 2): the whole corpus loads in under 15 s on 2 cores with peak RSS under 4 GB.
use std::path::{Path, PathBuf};
use std::time::Instant;

use koala_pipeline::sources::{self, LoadOptions};
use koala_pipeline::synth::{self, Scale, SynthOptions};

/// The same allocator as the `koala` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resets the peak-RSS counter (Linux ≥ 4.0); false when not allowed.
fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn io_floor(dir: &Path) -> (f64, u64) {
    let found = sources::discover(dir).expect("discover the corpus");
    let t = Instant::now();
    let mut bytes = 0u64;
    for f in &found.files {
        let mut r = sources::read::RecordReader::open(&f.path, sources::DEFAULT_MAX_RECORD_BYTES)
            .expect("open");
        while r.next_batch(32 << 20, 1).expect("read").is_some() {}
        bytes += r.finish().decoded_bytes;
    }
    (t.elapsed().as_secs_f64(), bytes)
}

fn main() {
    let arg: Option<PathBuf> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from);
    let scale: Scale = std::env::var("KOALA_BENCH_SCALE")
        .ok()
        .map(|s| s.parse().expect("KOALA_BENCH_SCALE: tiny, small or koala"))
        .unwrap_or(Scale::Koala);
    let _tmp;
    let dir = match arg {
        Some(d) => d,
        None => {
            let tmp = tempfile::tempdir().expect("temp dir");
            let t = Instant::now();
            let r = synth::synth(tmp.path(), &SynthOptions { scale, seed: 0 }).expect("synth");
            println!(
                "synth --scale {scale:?}: {} files, {:.1} MB ({:.1} MB on disk) in {:.2}s",
                r.files.len(),
                r.decoded_bytes() as f64 / 1e6,
                r.disk_bytes() as f64 / 1e6,
                t.elapsed().as_secs_f64()
            );
            let d = tmp.path().to_path_buf();
            _tmp = tmp;
            d
        }
    };
    let threads = rayon::current_num_threads();
    println!("corpus: {}  (rayon threads: {threads})", dir.display());

    // Warm the page cache once so that the floor and the load see the same storage state.
    let (_, _) = io_floor(&dir);
    let (floor_s, decoded) = io_floor(&dir);

    let hwm_reset = reset_hwm();
    let before = vm_hwm_kib().unwrap_or(0);
    let t = Instant::now();
    let mut out = sources::load_dir(&dir, &LoadOptions::default()).expect("load");
    let load_s = t.elapsed().as_secs_f64();
    let peak = vm_hwm_kib().unwrap_or(0);
    out.check_reconciled().expect("counts reconcile");
    let totals = out.totals();

    let parquet = tempfile::NamedTempFile::new().expect("temp file");
    let t = Instant::now();
    out.write_table(parquet.path()).expect("write parquet");
    let write_s = t.elapsed().as_secs_f64();
    let parquet_mb = std::fs::metadata(parquet.path())
        .map(|m| m.len())
        .unwrap_or(0) as f64
        / 1e6;
    let peak_with_write = vm_hwm_kib().unwrap_or(0);

    let mb = decoded as f64 / 1e6;
    println!();
    println!(
        "{:<10} {:>9} {:>10} {:>9}",
        "source", "records", "rows", "MB"
    );
    for s in out.by_source() {
        println!(
            "{:<10} {:>9} {:>10} {:>9.1}",
            s.source,
            s.records_read,
            s.rows,
            s.decoded_bytes as f64 / 1e6
        );
    }
    println!();
    println!(
        "io floor (read + gunzip): {floor_s:>7.2} s  {:>8.0} MB/s   (baseline)",
        mb / floor_s
    );
    println!(
        "load (parse + table):     {load_s:>7.2} s  {:>8.0} MB/s  {:>9.0} rows/s  {:>9.0} records/s  = {:.1}x the floor",
        mb / load_s,
        totals.rows as f64 / load_s,
        totals.records_read as f64 / load_s,
        load_s / floor_s
    );
    println!(
        "write parquet (zstd):     {write_s:>7.2} s  {:>8.1} MB file",
        parquet_mb
    );
    println!(
        "rows {}  records {}  quarantined {}  decoded {:.1} MB",
        totals.rows, totals.records_read, totals.records_quarantined, mb
    );
    println!(
        "peak RSS during load: {:.2} GB{}  (after the Parquet write: {:.2} GB)",
        peak as f64 / 1048576.0,
        if hwm_reset {
            String::new()
        } else {
            format!(
                " (not reset after synth; {:.2} GB before the load)",
                before as f64 / 1048576.0
            )
        },
        peak_with_write as f64 / 1048576.0
    );
    let ok = load_s < 15.0 && (peak as f64) < 4.0 * 1048576.0;
    println!(
        "goal (< 15 s, < 4 GB on 2 cores): {}",
        if ok { "met" } else { "NOT met" }
    );
}
