//! Scenario files: the TOML description of a PON, its defaults (DESIGN.md §5), its
//! validation (every error names the field), and its resolution into the physics
//! ([`Pon`]).
//!
//! The commented example `sim/scenarios/pon.toml` lists every key; it is compiled in as
//! [`EXAMPLE`] and parses to the defaults.

use crate::model::{DetectorModel, Eve, OnuModel, SlotMap, SourceModel};
use qpon_qkd::InvalidInput;
use qpon_qkd::finite_key::DecoyParams;
use serde::{Deserialize, Serialize};

/// The commented example scenario (all defaults).
pub const EXAMPLE: &str = include_str!("../scenarios/pon.toml");

/// Largest PON the model accepts.
pub const MAX_ONUS: usize = 256;

/// A scenario file. Every section and key is optional; unknown keys are refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// Number of ONUs (1–256).
    pub onus: usize,
    /// Seed of the event sampler.
    pub seed: u64,
    /// Clock and frame.
    pub clock: ClockCfg,
    /// Fibre.
    pub fiber: FiberCfg,
    /// Splitter tree.
    pub splitter: SplitterCfg,
    /// Receiver at the OLT.
    pub receiver: ReceiverCfg,
    /// Sources at the ONUs (defaults for every ONU).
    pub source: SourceCfg,
    /// Slot map.
    pub slots: SlotsCfg,
    /// Security and planning parameters.
    pub security: SecurityCfg,
    /// Per-ONU overrides.
    pub onu: Vec<OnuOverride>,
    /// Eavesdroppers.
    pub eve: Vec<EveCfg>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            onus: 32,
            seed: 1,
            clock: ClockCfg::default(),
            fiber: FiberCfg::default(),
            splitter: SplitterCfg::default(),
            receiver: ReceiverCfg::default(),
            source: SourceCfg::default(),
            slots: SlotsCfg::default(),
            security: SecurityCfg::default(),
            onu: Vec::new(),
            eve: Vec::new(),
        }
    }
}

/// `[clock]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockCfg {
    /// Detector gates per second (1e9).
    pub gate_rate_hz: f64,
    /// Gates per frame (125 000 = 125 µs at 1 GHz).
    pub frame_gates: u64,
}

impl Default for ClockCfg {
    fn default() -> Self {
        Self { gate_rate_hz: 1e9, frame_gates: 125_000 }
    }
}

/// `[fiber]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FiberCfg {
    /// Default fibre length OLT→ONU, km (10).
    pub length_km: f64,
    /// Attenuation, dB/km (0.33 at 1310 nm).
    pub attenuation_db_per_km: f64,
}

impl Default for FiberCfg {
    fn default() -> Self {
        Self { length_km: 10.0, attenuation_db_per_km: 0.33 }
    }
}

/// Splitter loss profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitterProfile {
    /// 10·log10(split) + `excess_db` per stage.
    Ideal,
    /// Datasheet maxima per stage: 1:2 4.0, 1:4 7.4, 1:8 10.7, 1:16 13.8, 1:32 17.2,
    /// 1:64 21.5, 1:128 25.5 dB (the last three from DESIGN.md §5; `excess_db` unused).
    Datasheet,
}

/// `[splitter]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitterCfg {
    /// Split ratio of each stage from the OLT out, e.g. `[4, 16]`; their product must be
    /// ≥ the number of ONUs. Empty: one stage, the smallest power of two ≥ ONUs.
    pub stages: Vec<u32>,
    /// Loss profile.
    pub profile: SplitterProfile,
    /// Excess loss per stage, dB (ideal profile).
    pub excess_db: f64,
    /// Port-to-port non-uniformity, dB: port i gets u·(i/(N−1) − ½) extra loss.
    pub nonuniformity_db: f64,
}

impl Default for SplitterCfg {
    fn default() -> Self {
        Self { stages: Vec::new(), profile: SplitterProfile::Ideal, excess_db: 1.0, nonuniformity_db: 0.0 }
    }
}

/// Detector profile names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DetectorProfile {
    /// InGaAs avalanche photodiodes.
    Apd,
    /// Superconducting nanowires.
    Snspd,
}

impl DetectorProfile {
    /// The profile's parameters.
    pub fn model(self) -> DetectorModel {
        match self {
            DetectorProfile::Apd => DetectorModel::APD,
            DetectorProfile::Snspd => DetectorModel::SNSPD,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            DetectorProfile::Apd => "apd",
            DetectorProfile::Snspd => "snspd",
        }
    }
}

/// `[receiver]`: a profile, and optional overrides of its fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverCfg {
    /// `apd` or `snspd`.
    pub detector: DetectorProfile,
    /// Internal loss of the receiver (basis choice, couplers), dB (2).
    pub internal_loss_db: f64,
    /// Detection efficiency.
    pub efficiency: Option<f64>,
    /// Dark-count probability per gate per detector.
    pub dark_count: Option<f64>,
    /// Afterpulse probability per click.
    pub afterpulse: Option<f64>,
    /// Afterpulse window after the dead time, gates.
    pub afterpulse_window: Option<u32>,
    /// Afterpulse decay constant, gates.
    pub afterpulse_decay: Option<f64>,
    /// Dead time, gates.
    pub dead_time: Option<u32>,
    /// Probability of Z at the active basis choice during guard gates (ONU slots use the
    /// ONU's `p_z`).
    pub p_z: f64,
}

impl Default for ReceiverCfg {
    fn default() -> Self {
        Self {
            detector: DetectorProfile::Apd,
            internal_loss_db: 2.0,
            efficiency: None,
            dark_count: None,
            afterpulse: None,
            afterpulse_window: None,
            afterpulse_decay: None,
            dead_time: None,
            p_z: 0.75,
        }
    }
}

/// `[source]` (and the optional fields of `[[onu]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceCfg {
    /// Intensities μ1, μ2, μ3.
    pub mu: [f64; 3],
    /// Their probabilities.
    pub p: [f64; 3],
    /// Probability of Z at both ends.
    pub p_z: f64,
    /// Optical misalignment.
    pub misalignment: f64,
}

impl Default for SourceCfg {
    fn default() -> Self {
        let s = SourceModel::default();
        Self { mu: s.mu, p: s.p, p_z: s.p_z, misalignment: s.misalignment }
    }
}

/// `[slots]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlotsCfg {
    /// Guard gates after each slot; default dead time + afterpulse window.
    pub guard_gates: Option<u64>,
    /// Relative share of each ONU (one weight per ONU); default equal.
    pub shares: Option<Vec<f64>>,
}

/// `[security]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityCfg {
    /// ε_sec.
    pub eps_sec: f64,
    /// ε_cor.
    pub eps_cor: f64,
    /// Block size: sifted key-basis detections per block.
    pub block: f64,
    /// Reconciliation efficiency assumed for planning.
    pub f_ec: f64,
}

impl Default for SecurityCfg {
    fn default() -> Self {
        Self { eps_sec: 1e-10, eps_cor: 1e-15, block: 1e5, f_ec: 1.1 }
    }
}

/// `[[onu]]`: overrides for ONU `index` (0-based).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnuOverride {
    /// Which ONU.
    pub index: usize,
    /// Fibre length, km.
    pub length_km: Option<f64>,
    /// Extra loss (connectors, a bad splice), dB.
    pub extra_loss_db: Option<f64>,
    /// Intensities.
    pub mu: Option<[f64; 3]>,
    /// Their probabilities.
    pub p: Option<[f64; 3]>,
    /// Probability of Z.
    pub p_z: Option<f64>,
    /// Misalignment.
    pub misalignment: Option<f64>,
}

/// Attack names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    /// See [`Eve::InterceptResend`].
    InterceptResend,
    /// See [`Eve::Pns`].
    Pns,
    /// See [`Eve::Blinding`].
    Blinding,
}

/// `[[eve]]`: one eavesdropper. Keys not used by the attack are refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EveCfg {
    /// Attacked ONU (0-based).
    pub onu: usize,
    /// `intercept-resend`, `pns` or `blinding`.
    pub attack: Attack,
    /// intercept-resend: fraction of pulses (default 1).
    pub fraction: Option<f64>,
    /// intercept-resend, blinding: Eve's probability of Z (default ½, blinding 0.75).
    pub p_z: Option<f64>,
    /// intercept-resend: mean photon number resent (default μ1).
    pub resend_mu: Option<f64>,
    /// pns: fraction of one-photon pulses blocked (default 1).
    pub block_single: Option<f64>,
    /// pns: Eve's channel transmittance (default: matches the honest signal gain).
    pub transmittance: Option<f64>,
    /// blinding: trigger probability (default: matches the honest signal gain).
    pub trigger: Option<f64>,
}

impl EveCfg {
    /// Parses the command-line form `ATTACK:onu=K[,key=value…]`, e.g.
    /// `intercept-resend:onu=3,fraction=0.5`.
    pub fn parse_cli(spec: &str) -> Result<EveCfg, InvalidInput> {
        let (attack, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let attack = match attack {
            "intercept-resend" | "ir" => Attack::InterceptResend,
            "pns" => Attack::Pns,
            "blinding" => Attack::Blinding,
            other => {
                return Err(InvalidInput::new(
                    "eve",
                    format!("unknown attack `{other}` (intercept-resend, pns, blinding)"),
                ));
            }
        };
        let mut e = EveCfg {
            onu: usize::MAX,
            attack,
            fraction: None,
            p_z: None,
            resend_mu: None,
            block_single: None,
            transmittance: None,
            trigger: None,
        };
        for kv in rest.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| InvalidInput::new("eve", format!("`{kv}` is not key=value")))?;
            let num = || {
                v.parse::<f64>()
                    .map_err(|_| InvalidInput::new(format!("eve.{k}"), format!("`{v}` is not a number")))
            };
            match k {
                "onu" => {
                    e.onu = v
                        .parse()
                        .map_err(|_| InvalidInput::new("eve.onu", format!("`{v}` is not an ONU index")))?
                }
                "fraction" => e.fraction = Some(num()?),
                "p_z" | "z" => e.p_z = Some(num()?),
                "resend_mu" => e.resend_mu = Some(num()?),
                "block_single" => e.block_single = Some(num()?),
                "transmittance" => e.transmittance = Some(num()?),
                "trigger" => e.trigger = Some(num()?),
                other => return Err(InvalidInput::new(format!("eve.{other}"), "unknown key")),
            }
        }
        if e.onu == usize::MAX {
            return Err(InvalidInput::new("eve.onu", "missing (e.g. intercept-resend:onu=3)"));
        }
        Ok(e)
    }

    fn resolve(&self, at: &str) -> Result<Eve, InvalidInput> {
        let unit = |name: &str, v: Option<f64>, default: f64| -> Result<f64, InvalidInput> {
            let x = v.unwrap_or(default);
            if !(x.is_finite() && (0.0..=1.0).contains(&x)) {
                return Err(InvalidInput::new(format!("{at}.{name}"), format!("{x} must be in [0, 1]")));
            }
            Ok(x)
        };
        let refuse = |name: &str, v: Option<f64>| -> Result<(), InvalidInput> {
            match v {
                Some(_) => Err(InvalidInput::new(
                    format!("{at}.{name}"),
                    format!("not a parameter of {:?}", self.attack),
                )),
                None => Ok(()),
            }
        };
        Ok(match self.attack {
            Attack::InterceptResend => {
                refuse("block_single", self.block_single)?;
                refuse("transmittance", self.transmittance)?;
                refuse("trigger", self.trigger)?;
                if let Some(m) = self.resend_mu
                    && !(m.is_finite() && m > 0.0)
                {
                    return Err(InvalidInput::new(format!("{at}.resend_mu"), format!("{m} must be > 0")));
                }
                Eve::InterceptResend {
                    fraction: unit("fraction", self.fraction, 1.0)?,
                    p_z: unit("p_z", self.p_z, 0.5)?,
                    resend_mu: self.resend_mu,
                }
            }
            Attack::Pns => {
                refuse("fraction", self.fraction)?;
                refuse("p_z", self.p_z)?;
                refuse("resend_mu", self.resend_mu)?;
                refuse("trigger", self.trigger)?;
                Eve::Pns {
                    block_single: unit("block_single", self.block_single, 1.0)?,
                    transmittance: match self.transmittance {
                        Some(t) => Some(unit("transmittance", Some(t), 1.0)?),
                        None => None,
                    },
                }
            }
            Attack::Blinding => {
                refuse("fraction", self.fraction)?;
                refuse("resend_mu", self.resend_mu)?;
                refuse("block_single", self.block_single)?;
                refuse("transmittance", self.transmittance)?;
                Eve::Blinding {
                    p_z: unit("p_z", self.p_z, 0.75)?,
                    trigger: match self.trigger {
                        Some(t) => Some(unit("trigger", Some(t), 1.0)?),
                        None => None,
                    },
                }
            }
        })
    }
}

/// Parses a scenario from TOML text; errors name the field (`fiber.length_km`,
/// `onu[2].mu`, …).
pub fn parse(text: &str) -> Result<Scenario, InvalidInput> {
    let de = toml::Deserializer::parse(text).map_err(|e| InvalidInput::new("scenario", e.to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.message().to_string();
        InvalidInput::new(if path == "." || path.is_empty() { "scenario".to_string() } else { path }, msg)
    })
}

/// Everything about one ONU after resolution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OnuSetup {
    /// Fibre length, km.
    pub length_km: f64,
    /// Its physics (loss, source, eavesdropper).
    pub model: OnuModel,
}

/// A resolved, validated PON: what the planner and the sampler consume.
#[derive(Clone, Debug, PartialEq)]
pub struct Pon {
    /// Gates per second.
    pub gate_rate_hz: f64,
    /// Detector model (both detectors).
    pub detector: DetectorModel,
    /// Detector profile name the model started from.
    pub detector_profile: DetectorProfile,
    /// Receiver internal loss, dB.
    pub receiver_loss_db: f64,
    /// Receiver's probability of Z in guard gates.
    pub receiver_p_z: f64,
    /// ONUs.
    pub onus: Vec<OnuSetup>,
    /// Slot map.
    pub map: SlotMap,
    /// Security and planning parameters.
    pub security: SecurityCfg,
    /// Sampler seed.
    pub seed: u64,
}

fn finite_ge(field: &str, x: f64, lo: f64) -> Result<(), InvalidInput> {
    if !(x.is_finite() && x >= lo) {
        return Err(InvalidInput::new(field, format!("{x} must be a number ≥ {lo}")));
    }
    Ok(())
}

fn in_open_unit(field: &str, x: f64) -> Result<(), InvalidInput> {
    if !(x.is_finite() && x > 0.0 && x < 1.0) {
        return Err(InvalidInput::new(field, format!("{x} must be in (0, 1)")));
    }
    Ok(())
}

fn source_model(
    at: &str,
    mu: [f64; 3],
    p: [f64; 3],
    p_z: f64,
    mis: f64,
) -> Result<SourceModel, InvalidInput> {
    DecoyParams { mu, p }.validate().map_err(|e| InvalidInput::new(format!("{at}.{}", e.field), e.reason))?;
    in_open_unit(&format!("{at}.p_z"), p_z)?;
    if !(mis.is_finite() && (0.0..=0.5).contains(&mis)) {
        return Err(InvalidInput::new(format!("{at}.misalignment"), format!("{mis} must be in [0, 0.5]")));
    }
    Ok(SourceModel { mu, p, p_z, misalignment: mis })
}

/// Loss of one splitter stage.
fn stage_loss(split: u32, profile: SplitterProfile, excess: f64) -> Result<f64, InvalidInput> {
    match profile {
        SplitterProfile::Ideal => Ok(if split <= 1 { 0.0 } else { 10.0 * f64::from(split).log10() + excess }),
        SplitterProfile::Datasheet => match split {
            1 => Ok(0.0),
            2 => Ok(4.0),
            4 => Ok(7.4),
            8 => Ok(10.7),
            16 => Ok(13.8),
            32 => Ok(17.2),
            64 => Ok(21.5),
            128 => Ok(25.5),
            other => Err(InvalidInput::new(
                "splitter.stages",
                format!("the datasheet profile knows 1:2 … 1:128 (powers of two), not 1:{other}"),
            )),
        },
    }
}

impl Scenario {
    /// Validates and resolves the scenario. Every error names the field.
    pub fn resolve(&self) -> Result<Pon, InvalidInput> {
        let n = self.onus;
        if n == 0 || n > MAX_ONUS {
            return Err(InvalidInput::new("onus", format!("{n} must be in 1..={MAX_ONUS}")));
        }
        if !(self.clock.gate_rate_hz.is_finite() && self.clock.gate_rate_hz > 0.0) {
            return Err(InvalidInput::new("clock.gate_rate_hz", "must be > 0"));
        }
        finite_ge("fiber.length_km", self.fiber.length_km, 0.0)?;
        finite_ge("fiber.attenuation_db_per_km", self.fiber.attenuation_db_per_km, 0.0)?;
        finite_ge("splitter.excess_db", self.splitter.excess_db, 0.0)?;
        finite_ge("splitter.nonuniformity_db", self.splitter.nonuniformity_db, 0.0)?;
        let stages = if self.splitter.stages.is_empty() {
            if n > 1 { vec![(n as u32).next_power_of_two()] } else { Vec::new() }
        } else {
            self.splitter.stages.clone()
        };
        if stages.contains(&0) {
            return Err(InvalidInput::new("splitter.stages", "a split ratio must be ≥ 1"));
        }
        let ports: u64 = stages.iter().map(|&s| u64::from(s)).product();
        if ports < n as u64 {
            return Err(InvalidInput::new(
                "splitter.stages",
                format!("the splits {stages:?} give {ports} ports, fewer than {n} ONUs"),
            ));
        }
        let mut split_loss = 0.0;
        for &s in &stages {
            split_loss += stage_loss(s, self.splitter.profile, self.splitter.excess_db)?;
        }

        let r = &self.receiver;
        finite_ge("receiver.internal_loss_db", r.internal_loss_db, 0.0)?;
        in_open_unit("receiver.p_z", r.p_z)?;
        let mut det = r.detector.model();
        if let Some(x) = r.efficiency {
            if !(x.is_finite() && x > 0.0 && x <= 1.0) {
                return Err(InvalidInput::new("receiver.efficiency", format!("{x} must be in (0, 1]")));
            }
            det.efficiency = x;
        }
        if let Some(x) = r.dark_count {
            if !(x.is_finite() && (0.0..0.5).contains(&x)) {
                return Err(InvalidInput::new("receiver.dark_count", format!("{x} must be in [0, 0.5)")));
            }
            det.dark_count = x;
        }
        if let Some(x) = r.afterpulse {
            if !(x.is_finite() && (0.0..0.5).contains(&x)) {
                return Err(InvalidInput::new("receiver.afterpulse", format!("{x} must be in [0, 0.5)")));
            }
            det.afterpulse = x;
            if x > 0.0 && det.afterpulse_window == 0 {
                det.afterpulse_window = DetectorModel::APD.afterpulse_window;
                det.afterpulse_decay = DetectorModel::APD.afterpulse_decay;
            }
        }
        if let Some(x) = r.afterpulse_window {
            if x > 10_000 {
                return Err(InvalidInput::new(
                    "receiver.afterpulse_window",
                    format!("{x} must be ≤ 10000 gates"),
                ));
            }
            det.afterpulse_window = x;
        }
        if let Some(x) = r.afterpulse_decay {
            if !(x.is_finite() && x > 0.0) {
                return Err(InvalidInput::new("receiver.afterpulse_decay", format!("{x} must be > 0")));
            }
            det.afterpulse_decay = x;
        }
        if let Some(x) = r.dead_time {
            if x > 100_000 {
                return Err(InvalidInput::new("receiver.dead_time", format!("{x} must be ≤ 100000 gates")));
            }
            det.dead_time = x;
        }
        if det.afterpulse > 0.0 && det.afterpulse_window == 0 {
            return Err(InvalidInput::new("receiver.afterpulse_window", "must be ≥ 1 when afterpulse > 0"));
        }

        let s = &self.source;
        let base = source_model("source", s.mu, s.p, s.p_z, s.misalignment)?;
        let mut onus: Vec<OnuSetup> = (0..n)
            .map(|i| {
                let spread = if n > 1 { i as f64 / (n - 1) as f64 - 0.5 } else { 0.0 };
                let loss = self.fiber.length_km * self.fiber.attenuation_db_per_km
                    + split_loss
                    + self.splitter.nonuniformity_db * spread;
                OnuSetup {
                    length_km: self.fiber.length_km,
                    model: OnuModel { channel_loss_db: loss.max(0.0), source: base, eve: None },
                }
            })
            .collect();
        for (j, o) in self.onu.iter().enumerate() {
            let at = format!("onu[{j}]");
            if o.index >= n {
                return Err(InvalidInput::new(format!("{at}.index"), format!("{} ≥ {n} ONUs", o.index)));
            }
            let setup = &mut onus[o.index];
            if let Some(l) = o.length_km {
                finite_ge(&format!("{at}.length_km"), l, 0.0)?;
                setup.model.channel_loss_db += (l - setup.length_km) * self.fiber.attenuation_db_per_km;
                setup.length_km = l;
            }
            if let Some(x) = o.extra_loss_db {
                finite_ge(&format!("{at}.extra_loss_db"), x, 0.0)?;
                setup.model.channel_loss_db += x;
            }
            let src = setup.model.source;
            setup.model.source = source_model(
                &at,
                o.mu.unwrap_or(src.mu),
                o.p.unwrap_or(src.p),
                o.p_z.unwrap_or(src.p_z),
                o.misalignment.unwrap_or(src.misalignment),
            )?;
        }
        for (j, e) in self.eve.iter().enumerate() {
            let at = format!("eve[{j}]");
            if e.onu >= n {
                return Err(InvalidInput::new(format!("{at}.onu"), format!("{} ≥ {n} ONUs", e.onu)));
            }
            if onus[e.onu].model.eve.is_some() {
                return Err(InvalidInput::new(
                    format!("{at}.onu"),
                    format!("ONU {} already has an eavesdropper", e.onu),
                ));
            }
            onus[e.onu].model.eve = Some(e.resolve(&at)?);
        }

        let frame = self.clock.frame_gates;
        let guard = self.slots.guard_gates.unwrap_or_else(|| det.guard_gates());
        if frame < n as u64 * (guard + 1) {
            return Err(InvalidInput::new(
                "clock.frame_gates",
                format!("{frame} gates cannot hold {n} slots with {guard} guard gates each"),
            ));
        }
        if let Some(sh) = &self.slots.shares {
            if sh.len() != n {
                return Err(InvalidInput::new("slots.shares", format!("{} weights for {n} ONUs", sh.len())));
            }
            if sh.iter().any(|w| !(w.is_finite() && *w >= 0.0)) || sh.iter().sum::<f64>() <= 0.0 {
                return Err(InvalidInput::new("slots.shares", "weights must be ≥ 0 with a positive sum"));
            }
        }
        let map = SlotMap::equal(frame, n, guard, self.slots.shares.as_deref());

        let sec = &self.security;
        in_open_unit("security.eps_sec", sec.eps_sec)?;
        in_open_unit("security.eps_cor", sec.eps_cor)?;
        if !(sec.block.is_finite() && sec.block >= 1.0) {
            return Err(InvalidInput::new("security.block", format!("{} must be ≥ 1", sec.block)));
        }
        if !(sec.f_ec.is_finite() && sec.f_ec >= 1.0) {
            return Err(InvalidInput::new("security.f_ec", format!("{} must be ≥ 1", sec.f_ec)));
        }
        Ok(Pon {
            gate_rate_hz: self.clock.gate_rate_hz,
            detector: det,
            detector_profile: r.detector,
            receiver_loss_db: r.internal_loss_db,
            receiver_p_z: r.p_z,
            onus,
            map,
            security: sec.clone(),
            seed: self.seed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_to_the_defaults() {
        let s = parse(EXAMPLE).unwrap();
        assert_eq!(s, Scenario::default());
        let pon = s.resolve().unwrap();
        assert_eq!(pon.onus.len(), 32);
        // 10 km × 0.33 + 1:32 (15.05 + 1) dB.
        assert!((pon.onus[0].model.channel_loss_db - (3.3 + 10.0 * 32f64.log10() + 1.0)).abs() < 1e-9);
        assert_eq!(pon.map.slots.len(), 32);
    }

    fn field_of(text: &str) -> String {
        match parse(text).and_then(|s| s.resolve().map(|_| ())) {
            Err(e) => e.field,
            Ok(()) => panic!("accepted: {text}"),
        }
    }

    #[test]
    fn bad_scenarios_name_the_field() {
        let cases = [
            ("onus = 8\ncolour = 3\n", "colour"),
            ("[fiber]\nlenght_km = 3.0\n", "fiber"),
            ("[fiber]\nlength_km = -1.0\n", "fiber.length_km"),
            ("onus = 40\n[splitter]\nstages = [4, 8]\n", "splitter.stages"),
            ("[source]\nmu = [0.3, 0.2, 0.15]\n", "source.mu"),
            ("[source]\nmu = [0.5, 0.2]\n", "source.mu"),
            ("[[onu]]\nindex = 3\nlength_km = -2.0\n", "onu[0].length_km"),
            ("[[onu]]\nindex = 99\n", "onu[0].index"),
            ("[[onu]]\nindex = 1\nmu = [0.4, 0.3, 0.1]\n", "onu[0].mu"),
            ("[[eve]]\nonu = 1\nattack = \"pns\"\nfraction = 0.5\n", "eve[0].fraction"),
            ("[[eve]]\nonu = 1\nattack = \"teleport\"\n", "eve[0].attack"),
            ("onus = 0\n", "onus"),
            ("[receiver]\ndetector = \"pmt\"\n", "receiver.detector"),
            ("[security]\nblock = 0\n", "security.block"),
        ];
        for (text, field) in cases {
            let got = field_of(text);
            assert!(got.starts_with(field), "{text:?}: got field {got:?}, want {field:?}");
        }
        // Unused ports are fine.
        assert!(parse("onus = 20\n[splitter]\nstages = [4, 8]\n").unwrap().resolve().is_ok());
    }

    #[test]
    fn cli_eve_specs() {
        let e = EveCfg::parse_cli("intercept-resend:onu=7,fraction=0.5").unwrap();
        assert_eq!((e.onu, e.attack, e.fraction), (7, Attack::InterceptResend, Some(0.5)));
        assert_eq!(EveCfg::parse_cli("blinding").unwrap_err().field, "eve.onu");
        assert_eq!(EveCfg::parse_cli("pns:onu=1,colour=2").unwrap_err().field, "eve.colour");
    }

    #[test]
    fn datasheet_and_cascades() {
        let s = parse("onus = 64\n[splitter]\nstages = [4, 16]\n").unwrap().resolve().unwrap();
        let ideal = 10.0 * 4f64.log10() + 1.0 + 10.0 * 16f64.log10() + 1.0 + 3.3;
        assert!((s.onus[0].model.channel_loss_db - ideal).abs() < 1e-9);
        let d = parse("onus = 64\n[splitter]\nprofile = \"datasheet\"\n").unwrap().resolve().unwrap();
        assert!((d.onus[0].model.channel_loss_db - (21.5 + 3.3)).abs() < 1e-9);
    }
}
