//! Ready VMs: sandboxes booted before anyone asks for them.
//!
//! Three kinds of process take part:
//! - **the pool** (`scute pool`, [`serve()`], in [`mod@serve`]) keeps `[pool] size` members
//!   booting or ready, one boot at a time, within `[pool] max_idle_mib` of
//!   host memory, and writes its state to `status.json` for `scute check`;
//! - **a member** (`scute pool-vm`, [`member()`], in [`mod@member`]), one per ready VM, boots it
//!   exactly as a shim would (its own state dir, jail uid, cgroup, and a
//!   virtiofsd serving an empty share), publishes a socket in `ready/` and
//!   waits. Its death signal is SIGTERM from the pool, so an unclaimed VM
//!   goes when the pool goes;
//! - **a shim** (`scute_runtime::handover::claim`) renames a socket of its VM shape from `ready/`
//!   into `claimed/` (a rename succeeds once: no VM goes to two sandboxes),
//!   connects, and receives the agent connection (SCM_RIGHTS) and the VM's
//!   pids and paths. The member then drops its death signal: the VM lives as
//!   long as that connection. When the shim says `kill` or its end closes
//!   (the shim died), the member kills the VM, releases the rest and exits.
//!
//! A member's VM has run no tenant's container before it is claimed (only
//! scute's own warm-up container), and it is claimed once: no tenant
//! inherits another's guest. Each pool VM has one NIC, on a tap alone in a
//! netns of its own (microvm can't hot-plug one later): a sandbox with a
//! one-interface netns (CNI, a pod) gets the tap moved into its netns and
//! the guest NIC re-addressed; one without a netns leaves it unused.
//!
//! The VM itself, and both sides of the handover protocol, are the
//! runtime's (`scute_runtime::poolvm`, `scute_runtime::handover`): this
//! crate is the two processes that drive them.

pub mod busybox;
pub mod member;
pub mod serve;

pub use member::member;
pub use serve::serve;
