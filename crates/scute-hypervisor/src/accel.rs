//! Choosing the accelerator: KVM when the host can run a standard guest on it,
//! TCG otherwise, with the reason spelled out.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// What the VMM will use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// What the configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// The choice and why it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelDecision {
    pub accel: Accel,
    pub reason: String,
}

/// Why KVM can't run a standard guest kernel here.
#[derive(Debug, thiserror::Error)]
pub enum KvmUnusable {
    #[error("/dev/kvm: {0}")]
    Device(#[source] std::io::Error),
    #[error("/dev/kvm is PVM (/sys/module/kvm_pvm is loaded), which boots only PVM-patched guest kernels")]
    Pvm,
}

/// Facts about the host the decision depends on (faked in tests).
pub trait HostProbe {
    /// `/dev/kvm` exists and opens read-write.
    fn kvm_device_usable(&self) -> std::io::Result<()>;
    /// The PVM flavour of KVM is loaded (`/sys/module/kvm_pvm`): it only runs
    /// PVM-patched guest kernels, a standard kernel hangs.
    fn kvm_is_pvm(&self) -> bool;
}

/// The real host.
pub struct RealHost;

impl HostProbe for RealHost {
    fn kvm_device_usable(&self) -> std::io::Result<()> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map(drop)
    }

    fn kvm_is_pvm(&self) -> bool {
        Path::new("/sys/module/kvm_pvm").exists()
    }
}

/// Decides the accelerator for `choice` on `host`.
pub fn decide(choice: AccelChoice, host: &dyn HostProbe) -> Result<AccelDecision, KvmUnusable> {
    let kvm = match host.kvm_device_usable() {
        Err(e) => Err(KvmUnusable::Device(e)),
        Ok(()) if host.kvm_is_pvm() => Err(KvmUnusable::Pvm),
        Ok(()) => Ok(()),
    };
    match (choice, kvm) {
        (AccelChoice::Tcg, _) => Ok(AccelDecision {
            accel: Accel::Tcg,
            reason: "tcg requested by configuration (software emulation)".into(),
        }),
        (AccelChoice::Kvm | AccelChoice::Auto, Ok(())) => Ok(AccelDecision {
            accel: Accel::Kvm,
            reason: "/dev/kvm is usable (hardware virtualization)".into(),
        }),
        (AccelChoice::Kvm, Err(why)) => Err(why),
        (AccelChoice::Auto, Err(why)) => Ok(AccelDecision {
            accel: Accel::Tcg,
            reason: format!("{why}; falling back to tcg (software emulation, slower)"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        dev: bool,
        pvm: bool,
    }
    impl HostProbe for Fake {
        fn kvm_device_usable(&self) -> std::io::Result<()> {
            if self.dev {
                Ok(())
            } else {
                Err(std::io::ErrorKind::NotFound.into())
            }
        }
        fn kvm_is_pvm(&self) -> bool {
            self.pvm
        }
    }

    #[test]
    fn auto_picks_kvm_on_real_hardware_virtualization() {
        let d = decide(
            AccelChoice::Auto,
            &Fake {
                dev: true,
                pvm: false,
            },
        )
        .unwrap();
        assert_eq!(d.accel, Accel::Kvm);
    }

    #[test]
    fn auto_falls_back_to_tcg_on_pvm_and_says_why() {
        let d = decide(
            AccelChoice::Auto,
            &Fake {
                dev: true,
                pvm: true,
            },
        )
        .unwrap();
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.reason.contains("PVM"), "{}", d.reason);
    }

    #[test]
    fn auto_falls_back_to_tcg_without_kvm() {
        let d = decide(
            AccelChoice::Auto,
            &Fake {
                dev: false,
                pvm: false,
            },
        )
        .unwrap();
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.reason.contains("/dev/kvm"));
    }

    #[test]
    fn explicit_kvm_fails_loudly_when_unusable() {
        assert!(decide(
            AccelChoice::Kvm,
            &Fake {
                dev: true,
                pvm: true
            }
        )
        .is_err());
        assert!(decide(
            AccelChoice::Kvm,
            &Fake {
                dev: false,
                pvm: false
            }
        )
        .is_err());
    }

    #[test]
    fn explicit_tcg_always_works() {
        let d = decide(
            AccelChoice::Tcg,
            &Fake {
                dev: true,
                pvm: false,
            },
        )
        .unwrap();
        assert_eq!(d.accel, Accel::Tcg);
    }
}
