//! How the declarations in `schema.rs` become code. `settings!` is invoked
//! once, with every setting; from each declaration it makes
//!
//! - a field of `Settings` (an `Option`), read from the flags with their
//!   environment variables by clap and from the YAML file by serde;
//! - the layering (`Settings::over`: these settings over a lower layer's);
//! - a field of `Values`: the setting with its default applied and its bounds
//!   checked (`Settings::values`), an `Option` where the default is derived
//!   elsewhere or there is none;
//! - an entry of `SETTINGS`, which `--help`, docs/settings.md and the tests
//!   read.
//!
//! A declaration reads
//!
//! ```text
//! /// One-line help.
//! name: type, default (VALUE), min N, max N, env "NEXT_CHAT_NAME", value "PLACEHOLDER";
//! ```
//!
//! where `min` and `max` are optional and the default is `(VALUE)`, `(unset)`
//! (none) or `(unset "what happens instead")` (derived where it is used).

use std::fmt::Display;
use std::path::PathBuf;

use clap::builder::ValueRange;

use super::{ConfigError, bad};

/// A type a setting may have.
pub trait SettingValue: Clone {
    /// How a declaration writes a default: `&'static str` for text.
    type Default;
    fn from_default(default: Self::Default) -> Self;
    /// The value as a number, to check bounds against; `None` when not a number.
    fn as_number(&self) -> Option<u64> {
        None
    }
    /// How many values the flag takes: a switch may go without (`--redis-cluster`).
    fn num_args() -> ValueRange {
        ValueRange::from(1)
    }
    /// The value of a flag given without one.
    const MISSING: Option<&'static str> = None;
}

macro_rules! number {
    ($($ty:ty),+) => {$(
        impl SettingValue for $ty {
            type Default = $ty;
            fn from_default(default: $ty) -> $ty {
                default
            }
            fn as_number(&self) -> Option<u64> {
                Some(*self as u64)
            }
        }
    )+};
}
number!(usize, u64, u32);

impl SettingValue for bool {
    type Default = bool;
    fn from_default(default: bool) -> bool {
        default
    }
    fn num_args() -> ValueRange {
        ValueRange::from(0..=1)
    }
    const MISSING: Option<&'static str> = Some("true");
}

impl SettingValue for String {
    type Default = &'static str;
    fn from_default(default: &'static str) -> String {
        default.to_owned()
    }
}

impl SettingValue for PathBuf {
    type Default = &'static str;
    fn from_default(default: &'static str) -> PathBuf {
        PathBuf::from(default)
    }
}

/// The least and most a numeric setting may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: Option<u64>,
    pub max: Option<u64>,
}

impl Bounds {
    /// `unset`: what leaving the setting unset means, as the error's hint.
    fn check<T: SettingValue>(
        &self,
        key: &'static str,
        value: &T,
        unset: Option<&str>,
    ) -> Result<(), ConfigError> {
        let Some(number) = value.as_number() else { return Ok(()) };
        let hint = unset.map(|text| format!(" (leave it unset for {text})")).unwrap_or_default();
        match (self.min, self.max) {
            (Some(min), _) if number < min => {
                Err(bad(key, format!("must be at least {min}{hint}")))
            }
            (_, Some(max)) if number > max => Err(bad(key, format!("must be at most {max}{hint}"))),
            _ => Ok(()),
        }
    }
}

/// A setting's default, as `SETTINGS` describes it.
#[derive(Clone, Copy)]
pub enum DefaultValue {
    /// The value when unset.
    Value(&'static dyn Display),
    /// Unset means this, worked out where the setting is used.
    Derived(&'static str),
    /// No default: unset means the feature is off or the check is not made.
    Unset,
}

/// One setting as the schema declares it.
#[derive(Clone, Copy)]
pub struct SettingInfo {
    /// The YAML key; also the flag (`--` and `-` for `_`) and the error's key.
    pub name: &'static str,
    pub env: &'static str,
    /// The flag's value placeholder in `--help` (`N`, `SECS`, `URL`).
    pub value_name: &'static str,
    /// The doc comment's lines.
    pub help: &'static [&'static str],
    pub default: DefaultValue,
    pub bounds: Bounds,
}

impl SettingInfo {
    pub fn flag(&self) -> String {
        format!("--{}", self.name.replace('_', "-"))
    }

    /// The doc comment as one line.
    pub fn help(&self) -> String {
        self.help.iter().map(|line| line.trim()).collect::<Vec<_>>().join(" ")
    }

    /// The default as text; `None` when there is none.
    pub fn default_text(&self) -> Option<String> {
        match self.default {
            DefaultValue::Value(value) => Some(value.to_string()),
            DefaultValue::Derived(text) => Some(text.to_owned()),
            DefaultValue::Unset => None,
        }
    }

    /// "at least 1", "at most 1000", "1 to 3600"; empty when unbounded.
    pub fn bounds_text(&self) -> String {
        match (self.bounds.min, self.bounds.max) {
            (Some(min), Some(max)) => format!("{min} to {max}"),
            (Some(min), None) => format!("at least {min}"),
            (None, Some(max)) => format!("at most {max}"),
            (None, None) => String::new(),
        }
    }
}

/// The `--help` line of the setting `name`: its help and default.
pub fn help_for(name: &str) -> String {
    let Some(info) = super::SETTINGS.iter().find(|info| info.name == name) else {
        return String::new();
    };
    match info.default_text() {
        Some(default) => format!("{} [default: {default}]", info.help()),
        None => info.help(),
    }
}

/// A setting with a default: the value set, else the default; in bounds.
pub fn with_default<T: SettingValue>(
    key: &'static str,
    set: Option<T>,
    default: T,
    bounds: Bounds,
) -> Result<T, ConfigError> {
    let value = set.unwrap_or(default);
    bounds.check(key, &value, None)?;
    Ok(value)
}

/// A setting without a default: the value set, if any, in bounds.
pub fn optional<T: SettingValue>(
    key: &'static str,
    set: Option<T>,
    bounds: Bounds,
    unset: Option<&str>,
) -> Result<Option<T>, ConfigError> {
    if let Some(value) = &set {
        bounds.check(key, value, unset)?;
    }
    Ok(set)
}

macro_rules! value_type {
    ($ty:ty, (unset $($text:literal)?)) => { Option<$ty> };
    ($ty:ty, ($default:expr)) => { $ty };
}

macro_rules! resolve {
    ($key:expr, $set:expr, $ty:ty, (unset $($text:literal)?), $bounds:expr) => {
        $crate::config::declare::optional::<$ty>($key, $set, $bounds, None $(.or(Some($text)))?)
    };
    ($key:expr, $set:expr, $ty:ty, ($default:expr), $bounds:expr) => {
        $crate::config::declare::with_default::<$ty>(
            $key,
            $set,
            <$ty as $crate::config::declare::SettingValue>::from_default($default),
            $bounds,
        )
    };
}

macro_rules! default_info {
    ((unset)) => {
        $crate::config::declare::DefaultValue::Unset
    };
    ((unset $text:literal)) => {
        $crate::config::declare::DefaultValue::Derived($text)
    };
    (($default:expr)) => {
        $crate::config::declare::DefaultValue::Value(&$default)
    };
}

macro_rules! bound {
    () => {
        None
    };
    ($bound:expr) => {
        Some($bound as u64)
    };
}

macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident: $ty:ty, default $default:tt $(, min $min:expr)? $(, max $max:expr)?,
            env $env:literal, value $value:literal;
    )+) => {
        /// Every setting, optional: unset ones come from the file, then the
        /// defaults. The same struct reads the flags (with their environment
        /// variables) and the YAML file, so the three spellings cannot drift
        /// apart. Each field's help is its declaration's in `schema.rs`.
        #[derive(Debug, Default, Clone, clap::Args, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            /// YAML configuration file; its keys are the long flag names with `_` for `-`.
            #[arg(long, env = "NEXT_CHAT_CONFIG", global = true, value_name = "FILE")]
            #[serde(skip)]
            pub config: Option<std::path::PathBuf>,
            $(
                #[arg(
                    long,
                    env = $env,
                    global = true,
                    value_name = $value,
                    help = $crate::config::declare::help_for(stringify!($name)),
                    num_args = <$ty as $crate::config::declare::SettingValue>::num_args(),
                    default_missing_value =
                        <$ty as $crate::config::declare::SettingValue>::MISSING,
                )]
                pub $name: Option<$ty>,
            )+
            /// The HS256 secret, from NEXT_CHAT_JWT_SECRET only: never a flag
            /// (`ps` shows flags) nor a file key.
            #[arg(skip)]
            #[serde(skip)]
            pub jwt_secret: Option<String>,
        }

        /// The settings with their defaults applied and their bounds checked.
        /// A setting whose default is derived from others, or that has none,
        /// is an `Option` here.
        #[derive(Debug, Clone)]
        pub struct Values {
            $(pub $name: $crate::config::declare::value_type!($ty, $default),)+
        }

        impl Settings {
            /// These settings over `lower`'s.
            pub fn over(&self, lower: &Settings) -> Settings {
                Settings {
                    config: self.config.clone(),
                    jwt_secret: self.jwt_secret.clone(),
                    $($name: self.$name.clone().or_else(|| lower.$name.clone()),)+
                }
            }

            /// Every setting with its default applied; the first out of
            /// bounds is the error.
            pub fn values(&self) -> Result<Values, $crate::config::ConfigError> {
                Ok(Values {
                    $($name: $crate::config::declare::resolve!(
                        stringify!($name),
                        self.$name.clone(),
                        $ty,
                        $default,
                        $crate::config::declare::Bounds {
                            min: $crate::config::declare::bound!($($min)?),
                            max: $crate::config::declare::bound!($($max)?),
                        }
                    )?,)+
                })
            }
        }

        /// Every setting, in declaration order.
        pub const SETTINGS: &[$crate::config::declare::SettingInfo] = &[$(
            $crate::config::declare::SettingInfo {
                name: stringify!($name),
                env: $env,
                value_name: $value,
                help: &[$($doc),+],
                default: $crate::config::declare::default_info!($default),
                bounds: $crate::config::declare::Bounds {
                    min: $crate::config::declare::bound!($($min)?),
                    max: $crate::config::declare::bound!($($max)?),
                },
            },
        )+];
    };
}

pub(crate) use {bound, default_info, resolve, settings, value_type};
