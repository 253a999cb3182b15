//! Which devices have every model loaded and run once. A node is ready
//! only when all of them have; a device is cold again while its worker
//! restarts or reloads its models.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

/// Warm / cold per device, shared by the GpuWorkers (writers) and the
/// readiness check (reader).
#[derive(Clone, Debug, Default)]
pub struct Warmth {
    devices: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl Warmth {
    /// Every device in `devices`, all cold.
    pub fn new(devices: impl IntoIterator<Item = String>) -> Self {
        Self {
            devices: Arc::new(Mutex::new(
                devices.into_iter().map(|d| (d, false)).collect(),
            )),
        }
    }

    /// Mark `device` warm (every model ran once) or cold.
    pub fn set(&self, device: &str, warm: bool) {
        self.lock().insert(device.to_string(), warm);
    }

    /// The devices that are not warm, sorted.
    pub fn cold(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, &warm)| !warm)
            .map(|(d, _)| d.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, bool>> {
        // A panic while holding this lock cannot leave the map half-written.
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_device_is_warm() {
        let warmth = Warmth::new(["cuda0".to_string(), "cuda1".to_string()]);
        assert_eq!(warmth.cold(), ["cuda0", "cuda1"]);
        warmth.set("cuda1", true);
        assert_eq!(warmth.cold(), ["cuda0"]);
        warmth.set("cuda0", true);
        assert!(warmth.cold().is_empty());
        warmth.set("cuda1", false);
        assert_eq!(warmth.cold(), ["cuda1"], "a reloading device is cold again");
    }
}
