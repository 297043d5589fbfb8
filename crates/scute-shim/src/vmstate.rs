//! The lifecycle of a sandbox's VM as the shim sees it, as a type: no VM
//! yet (or torn down), running, or lost (its agent's event stream ended:
//! the VM died or was killed, and every process in it with it). Only the
//! transitions [`VmPhase::valid_transition`] allows happen.

use std::sync::{Arc, Mutex};

use crate::guest::{Guest, SandboxVm};

/// A launched VM and its agent.
pub struct Running {
    /// Taken out at teardown; dropping it kills the VM and releases what
    /// it holds on the host.
    vm: Mutex<Option<Box<dyn SandboxVm>>>,
    pub guest: Arc<dyn Guest>,
}

impl Running {
    pub fn new(vm: Box<dyn SandboxVm>, guest: Arc<dyn Guest>) -> Arc<Self> {
        Arc::new(Self {
            vm: Mutex::new(Some(vm)),
            guest,
        })
    }

    /// Runs `f` on the VM; None once it was taken for teardown.
    pub fn with_vm<T>(&self, f: impl FnOnce(&mut dyn SandboxVm) -> T) -> Option<T> {
        self.vm.lock().unwrap().as_mut().map(|vm| f(vm.as_mut()))
    }

    pub fn take_vm(&self) -> Option<Box<dyn SandboxVm>> {
        self.vm.lock().unwrap().take()
    }
}

/// Where the VM is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmPhase {
    /// No VM: none booted yet, or torn down with the last container.
    Empty,
    /// Booted (or claimed from the pool) and answering.
    Running,
    /// The agent's event stream ended: the VM is gone, and so is every
    /// process that ran in it. Its host side waits for teardown.
    Lost,
}

impl VmPhase {
    /// A VM is launched from Empty, lost only while running, and torn
    /// down from either; nothing comes back from Lost.
    pub fn valid_transition(self, to: VmPhase) -> bool {
        use VmPhase::*;
        matches!(
            (self, to),
            (Empty, Running) | (Running, Lost) | (Running, Empty) | (Lost, Empty)
        )
    }
}

#[derive(Default)]
pub enum VmState {
    #[default]
    Empty,
    Running(Arc<Running>),
    Lost(Arc<Running>),
}

#[derive(Debug, thiserror::Error)]
#[error("the VM cannot go from {from:?} to {to:?}")]
pub struct InvalidTransition {
    pub from: VmPhase,
    pub to: VmPhase,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.phase())
    }
}

impl VmState {
    pub fn phase(&self) -> VmPhase {
        match self {
            VmState::Empty => VmPhase::Empty,
            VmState::Running(_) => VmPhase::Running,
            VmState::Lost(_) => VmPhase::Lost,
        }
    }

    /// The VM, running or lost (whose host side is still there).
    pub fn vm(&self) -> Option<&Arc<Running>> {
        match self {
            VmState::Empty => None,
            VmState::Running(r) | VmState::Lost(r) => Some(r),
        }
    }

    /// The agent: calls to a lost VM's agent fail with the channel closed.
    pub fn guest(&self) -> Option<Arc<dyn Guest>> {
        self.vm().map(|r| r.guest.clone())
    }

    /// Moves to `next` if the lifecycle allows; returns the state left.
    pub fn transition(&mut self, next: VmState) -> Result<VmState, InvalidTransition> {
        let (from, to) = (self.phase(), next.phase());
        if !from.valid_transition(to) {
            return Err(InvalidTransition { from, to });
        }
        Ok(std::mem::replace(self, next))
    }

    /// Marks `which` lost if it is the running VM (true). A VM torn down
    /// or replaced meanwhile ends its stream too: that is no loss.
    pub fn mark_lost(&mut self, which: &Arc<Running>) -> bool {
        match self {
            VmState::Running(r) if Arc::ptr_eq(r, which) => {
                let r = r.clone();
                self.transition(VmState::Lost(r)).is_ok()
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use VmPhase::*;

    #[test]
    fn only_the_lifecycles_transitions_are_valid() {
        let all = [Empty, Running, Lost];
        let valid: Vec<(VmPhase, VmPhase)> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.valid_transition(*b))
            .collect();
        assert_eq!(
            valid,
            [
                (Empty, Running),
                (Running, Empty),
                (Running, Lost),
                (Lost, Empty)
            ]
        );
    }

    #[test]
    fn an_invalid_transition_leaves_the_state_alone() {
        let mut s = VmState::Empty;
        let err = s.transition(VmState::Empty).unwrap_err();
        assert_eq!((err.from, err.to), (Empty, Empty));
        assert_eq!(s.phase(), Empty);
    }
}
