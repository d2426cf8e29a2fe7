//! The kernel programs' counters: each slot of [`crate::maps::COUNTERS`], its meaning and the
//! name status and metrics show it under, listed once.

/// Capacity of [`crate::maps::COUNTERS`]: room for counters to come without a map change.
pub const COUNTER_SLOTS: u32 = 16;

/// Defines [`Counter`] and [`COUNTER_NAMES`] from one list, so an index and its name cannot
/// drift apart; indexes must be dense from 0 (checked at compile time).
macro_rules! counters {
    ($( $(#[$doc:meta])* $variant:ident = $index:literal => $name:literal, )+) => {
        /// Indexes of [`crate::maps::COUNTERS`].
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $( $(#[$doc])* $variant = $index, )+
        }

        /// Counter names, indexed like [`Counter`], for status and metrics.
        pub const COUNTER_NAMES: &[&str] = &[$($name),+];

        const _: () = {
            let mut next = 0;
            $(
                assert!($index == next, "counter indexes must be dense from 0, in order");
                next += 1;
            )+
            assert!(next <= COUNTER_SLOTS, "more counters than COUNTERS has slots");
        };
    };
}

counters! {
    /// TCP connects from tagged cgroups to intercepted destinations, redirected.
    Redirected = 0 => "redirected",
    /// Connects refused because the record could not be stored (fail closed).
    RefusedNoRecord = 1 => "refused_no_record",
    /// Connects to intercepted destinations from a tagged cgroup of a family the interceptor
    /// does not listen on: refused (fail closed).
    RefusedNoListener = 2 => "refused_no_listener",
    /// Redirected sockets whose record could not be re-keyed by 4-tuple at TCP connect.
    RekeyFailed = 3 => "rekey_failed",
    /// getpeername() answers rewritten to the original destination.
    PeerRewritten = 4 => "peer_rewritten",
    /// cgroups tagged by the kernel at mkdir from [`crate::maps::STICKY_PATHS`].
    StickyTagged = 5 => "sticky_tagged",
    /// cgroup events dropped because the ring buffer was full.
    EventsDropped = 6 => "events_dropped",
    /// Unix connects from tagged cgroups to intercepted socket names, redirected.
    UnixRedirected = 7 => "unix_redirected",
    /// Tagged Unix connects refused: their record could not be stored, or no Unix listener.
    UnixRefused = 8 => "unix_refused",
    /// Tagged Unix stream connects to a name that is neither intercepted nor allowed (a link,
    /// a bind mount, another directory, a relative or abstract name): refused.
    UnixRefusedDirect = 9 => "unix_refused_direct",
    /// Tagged Unix stream connects to an allowed socket (`unix_allow`), left alone.
    UnixAllowed = 10 => "unix_allowed",
    /// getpeername() answers on redirected Unix sockets rewritten to the original path.
    UnixPeerRewritten = 11 => "unix_peer_rewritten",
}
