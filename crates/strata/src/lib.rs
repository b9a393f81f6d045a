//! strata: a cache for slow storage.
//!
//! The engine ([`Engine`]) sits between readers and a slow [`origin::Origin`] and keeps
//! what was read in faster tiers: RAM ([`tier::ram`]) and a crash-safe local disk
//! ([`tier::disk`]). See `docs/ARCHITECTURE.md` for the map of the code and the
//! invariants every change keeps.

pub mod catalog;
pub mod config;
pub mod device;
pub mod engine;
pub mod extent;
pub mod origin;
pub mod policy;
pub mod stats;
pub mod storage;
pub mod sync;
pub mod tier;

pub use config::{Config, DeviceSetup, DiskSetup, WriteBack};
pub use engine::{
    DeviceLoans, DeviceRead, Engine, EngineError, Handle, Passthrough, PinProgress, ReadBuf,
};
pub use tier::shared::SharedConfig;
