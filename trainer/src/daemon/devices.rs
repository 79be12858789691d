//! Device sets: `cpu`, `auto`, `cuda:0`, `cuda:0,1`, `cuda:0..4` (half-open). Jobs whose device
//! sets overlap run one at a time, in submission order.
use std::collections::BTreeSet;

/// One device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Device {
    Cpu,
    Cuda(u32),
}

/// A parsed, non-empty set of devices.
///
/// ```
/// use koala_trainer::daemon::devices::DeviceSet;
/// let a = DeviceSet::parse("cuda:0..2").unwrap();
/// let b = DeviceSet::parse("cuda:1").unwrap();
/// assert!(a.overlaps(&b));
/// assert!(!a.overlaps(&DeviceSet::parse("cpu").unwrap()));
/// assert_eq!(DeviceSet::parse("").unwrap(), DeviceSet::parse("cpu").unwrap());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSet(BTreeSet<Device>);

/// The largest CUDA ordinal accepted (a sanity bound, not a hardware query).
pub const MAX_CUDA_ORDINAL: u32 = crate::dp::MAX_CUDA_ORDINAL as u32;

impl DeviceSet {
    /// Parses a device string (the forms of [`crate::dp::DeviceRequest::parse`]); the empty
    /// string means `cpu`. `auto` may use the CPU or `cuda:0`, so it occupies both.
    pub fn parse(s: &str) -> Result<Self, String> {
        use crate::dp::DeviceRequest;
        let set = match DeviceRequest::parse(s)? {
            DeviceRequest::Cpu => BTreeSet::from([Device::Cpu]),
            DeviceRequest::Auto => BTreeSet::from([Device::Cpu, Device::Cuda(0)]),
            DeviceRequest::Cuda(o) => o.into_iter().map(|n| Device::Cuda(n as u32)).collect(),
        };
        Ok(DeviceSet(set))
    }

    /// Whether the two sets share a device.
    pub fn overlaps(&self, other: &DeviceSet) -> bool {
        self.0.iter().any(|d| other.0.contains(d))
    }

    /// Whether this is exactly the CPU.
    pub fn is_cpu(&self) -> bool {
        self.0.len() == 1 && self.0.contains(&Device::Cpu)
    }

    /// The devices, in order.
    pub fn devices(&self) -> impl Iterator<Item = Device> + '_ {
        self.0.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(DeviceSet::parse("cuda:0,2").unwrap().devices().count(), 2);
        assert_eq!(DeviceSet::parse("cuda:0..4").unwrap().devices().count(), 4);
        for bad in [
            "gpu",
            "cuda:",
            "cuda:x",
            "cuda:3..1",
            "cuda:1,1",
            "cuda:99999",
        ] {
            assert!(DeviceSet::parse(bad).is_err(), "{bad}");
        }
        assert!(DeviceSet::parse("cpu").unwrap().is_cpu());
        assert_eq!(
            DeviceSet::parse("cuda:0,cuda:2").unwrap(),
            DeviceSet::parse("cuda:0,2").unwrap()
        );
        let auto = DeviceSet::parse("auto").unwrap();
        assert!(auto.overlaps(&DeviceSet::parse("cpu").unwrap()));
        assert!(auto.overlaps(&DeviceSet::parse("cuda:0").unwrap()));
        assert!(!auto.overlaps(&DeviceSet::parse("cuda:1").unwrap()));
    }
}
