//! The quantum records a session consumes.
//!
//! The OLT's receiver (a detector board, or the simulator's sampler) produces
//! [`DetectionRecord`]s in the OLT's time base; an ONU's source produces [`PulseRecord`]s in
//! the ONU's own pulse numbering. `hw` re-exports these types, and `sim` produces them, so
//! the sessions cannot tell hardware from simulation.

use serde::{Deserialize, Serialize};

/// Measurement or preparation basis. qpon draws key from **Z** and tests in **X** (the
/// letters are swapped with respect to Lim et al. 2014, who take key from X).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Basis {
    /// Key basis.
    Z = 0,
    /// Test basis.
    X = 1,
}

impl Basis {
    /// 0 for Z, 1 for X.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Basis from its one-bit code (0 = Z, anything else = X).
    #[inline]
    pub const fn from_bit(b: bool) -> Self {
        if b { Basis::X } else { Basis::Z }
    }
}

/// Intensity class of a weak coherent pulse: μ1 (signal) > μ2 (decoy) > μ3 (weak decoy or
/// vacuum), the three classes of Lim et al. 2014.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Intensity {
    /// μ1, the strongest.
    Signal = 0,
    /// μ2.
    Decoy = 1,
    /// μ3, the weakest (vacuum or near-vacuum).
    Vacuum = 2,
}

impl Intensity {
    /// All classes, in the order of the bound's arrays (μ1, μ2, μ3).
    pub const ALL: [Intensity; 3] = [Intensity::Signal, Intensity::Decoy, Intensity::Vacuum];

    /// 0, 1 or 2 — the index into the bound's per-intensity arrays.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Class from its index; `None` for an index ≥ 3.
    #[inline]
    pub const fn from_index(i: u8) -> Option<Self> {
        match i {
            0 => Some(Intensity::Signal),
            1 => Some(Intensity::Decoy),
            2 => Some(Intensity::Vacuum),
            _ => None,
        }
    }
}

/// Flags a receiver attaches to a detection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DetectionFlags(pub u8);

impl DetectionFlags {
    /// Both detectors clicked in this gate. The receiver has already assigned a uniformly
    /// random bit (the squashing model that keeps the BB84 security proof valid for
    /// threshold detectors); the flag lets monitors count double clicks.
    pub const DOUBLE_CLICK: u8 = 1 << 0;
    /// The gate lies inside the afterpulse window of an earlier click.
    pub const AFTERPULSE_WINDOW: u8 = 1 << 1;

    /// True when `flag` (one of the constants) is set.
    #[inline]
    pub const fn has(self, flag: u8) -> bool {
        self.0 & flag != 0
    }

    /// True for a double click.
    #[inline]
    pub const fn double_click(self) -> bool {
        self.has(Self::DOUBLE_CLICK)
    }
}

/// One detection at the OLT's receiver, in the OLT's time base.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DetectionRecord {
    /// Global detector gate index since the receiver started (1 GHz: wraps after 584 years).
    pub gate: u64,
    /// Basis the receiver measured in.
    pub basis: Basis,
    /// Measured bit (random for a double click, see [`DetectionFlags::DOUBLE_CLICK`]).
    pub bit: bool,
    /// Flags.
    pub flags: DetectionFlags,
}

/// One pulse an ONU's source prepared, in the ONU's own pulse numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PulseRecord {
    /// Pulse index in the source's own numbering.
    pub pulse: u64,
    /// Preparation basis.
    pub basis: Basis,
    /// Encoded bit.
    pub bit: bool,
    /// Intensity class.
    pub intensity: Intensity,
}
