//! Compute devices: CUDA GPUs discovered through NVML (memory, utilisation)
//! and libtorch, or one CPU device when there is no GPU. The CUDA path is
//! compiled always and taken wherever a GPU exists.

use tch::Device;

/// One device a GpuWorker drives.
#[derive(Clone, Debug, PartialEq)]
pub struct ComputeDevice {
    /// `cpu` or `cuda0`, `cuda1`, … (used in actor names and metrics).
    pub id: String,
    /// libtorch device.
    pub device: Device,
    /// Total memory in bytes, when known.
    pub total_bytes: Option<u64>,
}

/// Memory and load of a device right now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DeviceLoad {
    /// Free memory in bytes, when known.
    pub free_bytes: Option<u64>,
    /// GPU utilisation 0–100, when known.
    pub utilization: Option<u32>,
}

/// The devices of this machine: every CUDA device libtorch can use (with
/// NVML facts where NVML loads), else the CPU.
pub fn discover(use_cuda: bool) -> Vec<ComputeDevice> {
    let cuda_count = if use_cuda && tch::Cuda::is_available() {
        tch::Cuda::device_count()
    } else {
        0
    };
    if cuda_count == 0 {
        return vec![ComputeDevice {
            id: "cpu".into(),
            device: Device::Cpu,
            total_bytes: None,
        }];
    }
    let nvml = nvml_wrapper::Nvml::init().ok();
    (0..cuda_count as usize)
        .map(|i| {
            let total_bytes = nvml
                .as_ref()
                .and_then(|n| n.device_by_index(i as u32).ok())
                .and_then(|d| d.memory_info().ok())
                .map(|m| m.total);
            ComputeDevice {
                id: format!("cuda{i}"),
                device: Device::Cuda(i),
                total_bytes,
            }
        })
        .collect()
}

/// Reads how much memory a device has free right now, for batch sizing:
/// NVML on CUDA (the handle is opened once), `MemAvailable` from
/// `/proc/meminfo` on the CPU.
pub struct MemoryProbe {
    source: MemorySource,
}

enum MemorySource {
    Host,
    Nvml(Option<nvml_wrapper::Nvml>, u32),
}

impl MemoryProbe {
    /// Host memory (the CPU device).
    pub fn cpu() -> Self {
        Self {
            source: MemorySource::Host,
        }
    }

    /// The memory of `device`.
    pub fn for_device(device: &ComputeDevice) -> Self {
        match device.device {
            Device::Cuda(index) => Self {
                source: MemorySource::Nvml(nvml_wrapper::Nvml::init().ok(), index as u32),
            },
            _ => Self::cpu(),
        }
    }

    /// Free bytes now; `None` when unknown (no NVML, no /proc).
    pub fn free_bytes(&self) -> Option<u64> {
        match &self.source {
            MemorySource::Host => std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| mem_available(&t)),
            MemorySource::Nvml(nvml, index) => nvml
                .as_ref()?
                .device_by_index(*index)
                .ok()?
                .memory_info()
                .ok()
                .map(|m| m.free),
        }
    }
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes: what the kernel can
/// hand out without swapping (free pages plus reclaimable caches).
pub fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemAvailable:")?;
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        match parts.next() {
            Some("kB") => Some(value * 1024),
            None => Some(value),
            Some(_) => None,
        }
    })
}

/// Current load of `device` (NVML on CUDA; nothing known on the CPU).
pub fn load(device: &ComputeDevice) -> DeviceLoad {
    let Device::Cuda(index) = device.device else {
        return DeviceLoad::default();
    };
    let Ok(nvml) = nvml_wrapper::Nvml::init() else {
        return DeviceLoad::default();
    };
    let Ok(handle) = nvml.device_by_index(index as u32) else {
        return DeviceLoad::default();
    };
    DeviceLoad {
        free_bytes: handle.memory_info().ok().map(|m| m.free),
        utilization: handle.utilization_rates().ok().map(|u| u.gpu),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_cuda_there_is_exactly_one_cpu_device() {
        let devices = discover(false);
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].id, "cpu");
        assert_eq!(load(&devices[0]), DeviceLoad::default());
    }

    #[test]
    fn host_free_memory_comes_from_mem_available() {
        let text = "MemTotal:       24000000 kB\nMemFree:          500000 kB\nMemAvailable:   20000000 kB\nBuffers: 1 kB\n";
        assert_eq!(mem_available(text), Some(20_000_000 * 1024));
        assert_eq!(mem_available("MemFree: 5 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots kB\n"), None);
        // This machine has a /proc/meminfo with some memory available.
        let free = MemoryProbe::cpu()
            .free_bytes()
            .expect("MemAvailable on Linux");
        assert!(free > 16 * 1024 * 1024, "{free}");
        assert_eq!(
            MemoryProbe::for_device(&discover(false)[0])
                .free_bytes()
                .map(|b| b > 0),
            Some(true)
        );
    }
}
