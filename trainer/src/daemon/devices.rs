//! Device sets: `cpu`, `cuda:0`, `cuda:0,1`, `cuda:0..4` (half-open). Jobs whose device sets
//! overlap run one at a time, in submission order.
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
pub const MAX_CUDA_ORDINAL: u32 = 1023;

impl DeviceSet {
    /// Parses a device string; the empty string means `cpu`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s == "cpu" {
            return Ok(DeviceSet(BTreeSet::from([Device::Cpu])));
        }
        let Some(rest) = s.strip_prefix("cuda:") else {
            return Err(format!(
                "{s:?} is not a device set (expected cpu, cuda:N, cuda:N,M or cuda:A..B)"
            ));
        };
        let mut set = BTreeSet::new();
        let ordinal = |t: &str| -> Result<u32, String> {
            let n: u32 = t
                .trim()
                .parse()
                .map_err(|_| format!("{t:?} is not a CUDA device ordinal"))?;
            if n > MAX_CUDA_ORDINAL {
                return Err(format!(
                    "CUDA ordinal {n} is out of range (0..={MAX_CUDA_ORDINAL})"
                ));
            }
            Ok(n)
        };
        if let Some((a, b)) = rest.split_once("..") {
            let (a, b) = (ordinal(a)?, ordinal(b)?);
            if a >= b {
                return Err(format!("cuda:{a}..{b} is an empty range"));
            }
            set.extend((a..b).map(Device::Cuda));
        } else {
            for t in rest.split(',') {
                if !set.insert(Device::Cuda(ordinal(t)?)) {
                    return Err(format!("device cuda:{} is listed twice", t.trim()));
                }
            }
        }
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
    }
}
