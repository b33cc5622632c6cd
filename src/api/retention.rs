//! The policy's `retention:` block as users write it. Its validation and the pruning plan
//! live in the retention module.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The policy's retention fields. Counts are signed so a negative count is reported clearly
/// instead of as a YAML type error.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<i64>,
    /// Like duply's MAX_AGE: points younger than this are kept (`2M`, `14D`, `1Y`, `12h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Like duply's MAX_FULL_BACKUPS: every point of the newest N chains is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_full_backups: Option<i64>,
    /// A size limit for the policy's data on the target (`500Gi`, `2T`, bytes): oldest
    /// chains go first until the data fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_size: Option<String>,
}
