//! The states rows move through, as types: a delivery's ([`DeliveryState`], `leads.state`) and
//! a partner's circuit breaker's ([`CircuitState`], `circuit_breakers.state`). Each is stored
//! as `text` under a SQL `CHECK` listing exactly the names of its `ALL` (a test compares the
//! two), and encodes and decodes itself with sqlx, so no query binds or compares a state by a
//! string literal of its own.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

/// Defines a state enum stored as `text`: its variants with their stored names, `ALL`,
/// `as_str`, `FromStr`, `Display`, and the sqlx `Type`/`Encode`/`Decode` of a `text` column.
macro_rules! text_state {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            /// Every state, in the order of the SQL `CHECK`.
            pub const ALL: &[Self] = &[$(Self::$variant),+];

            /// Its name as stored (and as in JSON).
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text,)+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;

            fn from_str(text: &str) -> Result<Self, UnknownState> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(UnknownState { kind: stringify!($name), text: text.to_owned() }),
                }
            }
        }

        /// Ordered by name, as the stored text sorts (`ORDER BY state`): maps keyed by state
        /// list them as a query would.
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.as_str().cmp(other.as_str())
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl Type<Postgres> for $name {
            fn type_info() -> PgTypeInfo {
                <&str as Type<Postgres>>::type_info()
            }

            fn compatible(ty: &PgTypeInfo) -> bool {
                <&str as Type<Postgres>>::compatible(ty)
            }
        }

        impl PgHasArrayType for $name {
            fn array_type_info() -> PgTypeInfo {
                <&str as PgHasArrayType>::array_type_info()
            }
        }

        impl Encode<'_, Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as Encode<Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl Decode<'_, Postgres> for $name {
            fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
                Ok(<&str as Decode<Postgres>>::decode(value)?.parse()?)
            }
        }
    };
}

text_state! {
    /// Where one (submission, partner) delivery stands: `leads.state`.
    pub enum DeliveryState {
        /// Claimed (its dedupe key held) and not answered yet: being sent or waiting to retry.
        Pending = "pending",
        /// The partner took the lead.
        Accepted = "accepted",
        /// The partner does not want it.
        Rejected = "rejected",
        /// Not sent: the partner had its dedupe key within the window (or said so itself).
        Duplicate = "duplicate",
        /// Delivery gave up; the lead's letter is in the partner's dead-letter queue.
        Failed = "failed",
    }
}

impl DeliveryState {
    /// Whether a row in this state holds its dedupe key against later leads: it was sent, or
    /// is being sent. A duplicate never sent it; a failed delivery gave it up.
    pub fn claims_key(self) -> bool {
        matches!(self, Self::Pending | Self::Accepted | Self::Rejected)
    }
}

text_state! {
    /// A partner's circuit breaker: `circuit_breakers.state`.
    pub enum CircuitState {
        /// Calls flow.
        Closed = "closed",
        /// Calls wait until the retry time.
        Open = "open",
        /// One replica holds the probe lease and sends one lead.
        HalfOpen = "half_open",
    }
}

/// A stored state name that is not one of its type's (a schema the code does not know).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{text}`")]
pub struct UnknownState {
    kind: &'static str,
    text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for &state in DeliveryState::ALL {
            assert_eq!(state.as_str().parse::<DeliveryState>(), Ok(state));
            assert_eq!(serde_json::to_value(state).ok(), Some(serde_json::Value::from(state.as_str())));
        }
        for &state in CircuitState::ALL {
            assert_eq!(state.to_string().parse::<CircuitState>(), Ok(state));
            assert_eq!(serde_json::to_value(state).ok(), Some(serde_json::Value::from(state.as_str())));
        }
        let unknown = "half-open".parse::<CircuitState>().map_err(|e| e.to_string());
        assert_eq!(unknown, Err("unknown CircuitState `half-open`".to_owned()));
    }
}
