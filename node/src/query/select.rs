//! Series selection: matchers evaluated on roaring-bitmap postings.

use kiln_model::selector::{Matcher, Selector};
use roaring::RoaringBitmap;

use crate::error::NodeError;
use crate::storage::keys::{self, GroupId};
use crate::storage::Storage;

/// Every series of the group (the union of the profile-type postings).
pub fn all_series(storage: &Storage, group: GroupId) -> Result<RoaringBitmap, NodeError> {
    let mut all = RoaringBitmap::new();
    for (_, bitmap) in storage.posting_values(group, keys::PROFILE_TYPE_POSTING)? {
        all |= bitmap;
    }
    Ok(all)
}

/// Series satisfying one matcher, within `universe`. Prometheus semantics: a series
/// without the label has the value `""`.
fn matcher_series(
    storage: &Storage,
    group: GroupId,
    matcher: &Matcher,
    universe: &RoaringBitmap,
) -> Result<RoaringBitmap, NodeError> {
    let mut with_label = RoaringBitmap::new();
    let mut matching = RoaringBitmap::new();
    for (value, bitmap) in storage.posting_values(group, &matcher.name)? {
        if matcher.matches(&value) {
            matching |= &bitmap;
        }
        with_label |= bitmap;
    }
    if matcher.matches_empty() {
        matching |= universe - &with_label;
    }
    Ok(matching & universe)
}

/// Ordinals of the series matching `selector` whose last sample is at or after
/// `not_before_unix_ms` (pass `i64::MIN` for no time filter).
pub fn select_series(
    storage: &Storage,
    group: GroupId,
    selector: &Selector,
    not_before_unix_ms: i64,
) -> Result<RoaringBitmap, NodeError> {
    let mut selected = match &selector.profile_type {
        Some(profile_type) => storage.posting(group, keys::PROFILE_TYPE_POSTING, &profile_type.id())?,
        None => all_series(storage, group)?,
    };
    for matcher in &selector.matchers {
        if selected.is_empty() {
            break;
        }
        selected = matcher_series(storage, group, matcher, &selected)?;
    }
    if not_before_unix_ms != i64::MIN {
        selected = alive_since(storage, group, &selected, not_before_unix_ms)?;
    }
    Ok(selected)
}

/// The series of `candidates` whose newest sample is at or after `not_before_unix_ms`.
pub fn alive_since(
    storage: &Storage,
    group: GroupId,
    candidates: &RoaringBitmap,
    not_before_unix_ms: i64,
) -> Result<RoaringBitmap, NodeError> {
    let mut alive = RoaringBitmap::new();
    for ordinal in candidates {
        if storage
            .series_last_seen(group, ordinal)?
            .is_some_and(|last| last >= not_before_unix_ms)
        {
            alive.insert(ordinal);
        }
    }
    Ok(alive)
}
