//! Backend selection never panics: on a machine without a GPU, `auto` falls back to the CPU with a
//! reason, and an explicit `cuda` request is a clear error. On a GPU machine, `cuda:0` opens.
use koala_kernels::Error;
use koala_kernels::select::{DeviceSpec, select};

fn gpu_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        koala_kernels::cuda::device_count().is_ok()
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

#[test]
fn parses_device_strings() {
    assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
    assert_eq!("CUDA".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
    assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
    assert_eq!(" auto ".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
    for bad in ["", "tpu", "cuda:", "cuda:x", "cuda:-1"] {
        let e = bad.parse::<DeviceSpec>().unwrap_err();
        assert!(e.to_string().contains("device"), "{bad:?}: {e}");
    }
    assert_eq!(
        DeviceSpec::parse_list("cuda:0..3").unwrap(),
        vec![
            DeviceSpec::Cuda(0),
            DeviceSpec::Cuda(1),
            DeviceSpec::Cuda(2)
        ]
    );
    assert_eq!(
        DeviceSpec::parse_list("cuda:1, cuda:0").unwrap(),
        vec![DeviceSpec::Cuda(1), DeviceSpec::Cuda(0)]
    );
    assert!(DeviceSpec::parse_list("cuda:2..2").is_err());
    assert!(DeviceSpec::parse_list("cuda:0,cuda:0").is_err());
    assert!(DeviceSpec::parse_list("").is_err());
}

#[test]
fn cpu_is_always_available() {
    let sel = select("cpu").unwrap();
    assert_eq!(sel.name(), "cpu");
    assert!(sel.fallback().is_none());
}

#[test]
fn auto_never_fails_and_explains_a_fallback() {
    let sel = select("auto").unwrap();
    if gpu_available() {
        assert_eq!(sel.name(), "cuda:0-bf16");
    } else {
        assert_eq!(sel.name(), "cpu");
        let why = sel.fallback().expect("a fallback reason");
        assert!(why.contains("running on the CPU"), "{why}");
        eprintln!("auto fell back as expected: {why}");
    }
}

#[test]
fn explicit_cuda_without_gpu_is_a_clear_error() {
    if gpu_available() {
        let sel = select("cuda:0").unwrap();
        assert_eq!(sel.name(), "cuda:0-bf16");
        assert!(sel.fallback().is_none());
        let e = select("cuda:4096").err().expect("no machine has 4097 GPUs");
        assert!(e.to_string().contains("cuda:4096"), "{e}");
        return;
    }
    for spec in ["cuda", "cuda:0", "cuda:7"] {
        match select(spec) {
            Err(Error::Unavailable(msg)) => {
                assert!(
                    msg.starts_with(
                        spec.trim_end_matches(|c: char| !c.is_ascii_digit())
                            .trim_end_matches(':')
                    ),
                    "{msg}"
                );
                eprintln!("{spec}: {msg}");
            }
            Err(e) => panic!("{spec}: expected Unavailable, got {e}"),
            Ok(s) => panic!("{spec}: selected {} on a machine without a GPU", s.name()),
        }
    }
}
