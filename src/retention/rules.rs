//! Retention rules as users write them (policy `retention:`), validated into `Rules`.

use jiff::SignedDuration;

pub use crate::api::RetentionSpec;

/// Validated rules.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    pub max_age: Option<SignedDuration>,
    pub max_full_backups: u32,
    pub max_total_size: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RulesError {
    #[error("retention.{0} is {1}: counts must be zero or more")]
    Negative(&'static str, i64),
    #[error("retention.maxAge '{0}': {1}")]
    BadAge(String, String),
    #[error("retention.maxTotalSize '{0}': expected bytes or a number with Ki, Mi, Gi, Ti, K, M, G or T")]
    BadSize(String),
    #[error("every retention rule is zero or unset: pruning would delete all but the newest backup; set at least one keep rule")]
    NothingKept,
}

fn count(name: &'static str, v: Option<i64>) -> Result<u32, RulesError> {
    match v {
        None => Ok(0),
        Some(n) if n < 0 => Err(RulesError::Negative(name, n)),
        Some(n) => Ok(n.min(u32::MAX as i64) as u32),
    }
}

/// duply-style ages: a number and s, m, h, D, W, M (30 days), Y (365 days); `d`, `w`, `y`
/// are accepted too. `m` is minutes, `M` months, as in duplicity's time strings.
pub fn parse_age(s: &str) -> Result<SignedDuration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| "expected a number followed by a unit, e.g. 2M or 14D".to_string())?;
    if n <= 0 {
        return Err("must be positive".into());
    }
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "D" | "d" => 86_400,
        "W" | "w" => 7 * 86_400,
        "M" => 30 * 86_400,
        "Y" | "y" => 365 * 86_400,
        "" => return Err("missing unit (s, m, h, D, W, M, Y)".into()),
        u => return Err(format!("unknown unit '{u}' (use s, m, h, D, W, M or Y)")),
    };
    Ok(SignedDuration::from_secs(n * secs))
}

pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit {
        "" => 1,
        "K" => 1000,
        "M" => 1000_u64.pow(2),
        "G" => 1000_u64.pow(3),
        "T" => 1000_u64.pow(4),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl RetentionSpec {
    /// No retention field is set: the policy keeps everything and nothing is pruned.
    pub fn is_unset(&self) -> bool {
        *self == Self::default()
    }

    pub fn validate(&self) -> Result<Rules, RulesError> {
        let r = Rules {
            keep_last: count("keepLast", self.keep_last)?,
            keep_hourly: count("keepHourly", self.keep_hourly)?,
            keep_daily: count("keepDaily", self.keep_daily)?,
            keep_weekly: count("keepWeekly", self.keep_weekly)?,
            keep_monthly: count("keepMonthly", self.keep_monthly)?,
            keep_yearly: count("keepYearly", self.keep_yearly)?,
            max_age: self
                .max_age
                .as_ref()
                .map(|a| parse_age(a).map_err(|e| RulesError::BadAge(a.clone(), e)))
                .transpose()?,
            max_full_backups: count("maxFullBackups", self.max_full_backups)?,
            max_total_size: self
                .max_total_size
                .as_ref()
                .map(|s| parse_size(s).ok_or_else(|| RulesError::BadSize(s.clone())))
                .transpose()?,
        };
        let keeps = r.keep_last
            + r.keep_hourly
            + r.keep_daily
            + r.keep_weekly
            + r.keep_monthly
            + r.keep_yearly
            + r.max_full_backups;
        if keeps == 0 && r.max_age.is_none() && r.max_total_size.is_none() {
            return Err(RulesError::NothingKept);
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_rules_are_rejected_with_clear_messages() {
        let neg = RetentionSpec {
            keep_daily: Some(-1),
            ..Default::default()
        };
        assert_eq!(
            neg.validate().unwrap_err().to_string(),
            "retention.keepDaily is -1: counts must be zero or more"
        );
        let age = RetentionSpec {
            max_age: Some("2X".into()),
            ..Default::default()
        };
        assert!(age
            .validate()
            .unwrap_err()
            .to_string()
            .contains("unknown unit 'X'"));
        let zero = RetentionSpec {
            keep_last: Some(0),
            keep_daily: Some(0),
            ..Default::default()
        };
        assert_eq!(zero.validate().unwrap_err(), RulesError::NothingKept);
        let size = RetentionSpec {
            keep_last: Some(1),
            max_total_size: Some("5 bananas".into()),
            ..Default::default()
        };
        assert!(matches!(size.validate(), Err(RulesError::BadSize(_))));
    }

    #[test]
    fn duply_ages_and_sizes_parse() {
        assert_eq!(
            parse_age("2M").unwrap(),
            SignedDuration::from_hours(24 * 60)
        );
        assert_eq!(
            parse_age("14D").unwrap(),
            SignedDuration::from_hours(24 * 14)
        );
        assert_eq!(parse_age("30m").unwrap(), SignedDuration::from_mins(30));
        assert!(parse_age("0D").is_err());
        assert_eq!(parse_size("2Gi"), Some(2 << 30));
        assert_eq!(parse_size("1500"), Some(1500));
        assert_eq!(parse_size("3T"), Some(3_000_000_000_000));
    }
}
