//! What a key's detail page shows of its use (SPEC §9): the last 30 days
//! drawn as an SVG bar chart on the server (no script, no chart library,
//! nothing the console's CSP would have to allow), its busiest routes, and
//! the least-privilege panel whose "Replace with a narrower key" posts the
//! suggestion to the roll form.

use crate::state::State;
use keyward_app::usage::{DAY_MS, RouteUsage, SuggestionView, UsageBucket};
use keyward_app::{AppError, Org};
use keyward_core::Catalog;

/// Days the chart and the suggestion look back over.
const DAYS: i64 = 30;
/// Routes listed under the chart, busiest first.
const BUSIEST: usize = 10;

// The chart's geometry, in SVG user units (the `viewBox` is scaled by CSS).
const LEFT: u64 = 40;
const PLOT_WIDTH: u64 = 600;
const TOP: u64 = 8;
const PLOT_HEIGHT: u64 = 112;
const BAR_GAP: u64 = 4;

/// Everything the detail page shows of a key's use.
pub(super) struct KeyUsage {
    pub(super) chart: Chart,
    pub(super) routes: Vec<RouteRow>,
    pub(super) advice: Advice,
}

/// The 30-day chart: one bar per day, allowed below denied.
pub(super) struct Chart {
    pub(super) bars: Vec<Bar>,
    pub(super) labels: Vec<Label>,
    pub(super) max: u64,
    pub(super) allowed: u64,
    pub(super) denied: u64,
    pub(super) summary: String,
}

/// One day's bar; `*_y` and `*_h` are already scaled to the plot.
pub(super) struct Bar {
    pub(super) x: u64,
    pub(super) width: u64,
    pub(super) allowed_y: u64,
    pub(super) allowed_h: u64,
    pub(super) denied_y: u64,
    pub(super) denied_h: u64,
    pub(super) title: String,
}

/// A date under the chart.
pub(super) struct Label {
    pub(super) x: u64,
    pub(super) text: String,
}

/// One line of the busiest routes.
pub(super) struct RouteRow {
    pub(super) request: String,
    pub(super) required: String,
    pub(super) allowed: u64,
    pub(super) denied: u64,
    pub(super) last_seen: String,
}

/// The least-privilege panel: what the key did not use, and what a
/// narrower key would hold (posted as-is by the replace form, so the key
/// created is the one the page showed; the app refuses it if it is not
/// narrower).
pub(super) struct Advice {
    pub(super) verdict: String,
    pub(super) used: Vec<String>,
    pub(super) unused: Vec<Grant>,
    pub(super) keep_sets: Vec<Grant>,
    pub(super) keep_scopes: Vec<String>,
}

/// A grant shown by its name, posted by its id.
pub(super) struct Grant {
    pub(super) id: String,
    pub(super) name: String,
}

impl KeyUsage {
    /// The key's last 30 days: daily totals, routes and the suggestion.
    pub(super) async fn load(state: &State, org: &Org, id: &str) -> Result<Self, AppError> {
        let now = state.app.now();
        let since = (now.div_euclid(DAY_MS) - (DAYS - 1)) * DAY_MS;
        let report = state.app.key_usage(org, id, since, now, true).await?;
        let suggestion = state
            .app
            .key_suggestion(org, id, "30d", DAYS * DAY_MS)
            .await?;
        let catalog = state.app.catalog();
        Ok(KeyUsage {
            chart: Chart::draw(&report.buckets),
            routes: report.routes.iter().take(BUSIEST).map(route_row).collect(),
            advice: Advice::from_suggestion(catalog, suggestion),
        })
    }
}

impl Chart {
    fn draw(buckets: &[UsageBucket]) -> Self {
        let max = buckets
            .iter()
            .map(|b| b.allowed + b.denied)
            .max()
            .unwrap_or(0);
        let slot = PLOT_WIDTH / u64::try_from(buckets.len().max(1)).unwrap_or(1);
        let bottom = TOP + PLOT_HEIGHT;
        let mut bars = Vec::with_capacity(buckets.len());
        let mut labels = Vec::new();
        let last = u64::try_from(buckets.len().saturating_sub(1)).unwrap_or(0);
        for (i, b) in (0u64..).zip(buckets) {
            let x = LEFT + i * slot;
            let allowed_h = scaled(b.allowed, max);
            let denied_h = scaled(b.denied, max);
            let day = day_of(&b.start);
            bars.push(Bar {
                x: x + BAR_GAP / 2,
                width: slot.saturating_sub(BAR_GAP).max(1),
                allowed_y: bottom - allowed_h,
                allowed_h,
                denied_y: bottom - allowed_h - denied_h,
                denied_h,
                title: format!("{day}: {} allowed, {} denied", b.allowed, b.denied),
            });
            // Today, and every week before it.
            if (last - i) % 7 == 0 {
                labels.push(Label {
                    x: x + slot / 2,
                    text: day.get(5..).unwrap_or(day).to_owned(),
                });
            }
        }
        let allowed = buckets.iter().map(|b| b.allowed).sum();
        let denied = buckets.iter().map(|b| b.denied).sum();
        Chart {
            summary: format!(
                "Requests per day over the last {DAYS} days: {allowed} allowed, {denied} denied"
            ),
            bars,
            labels,
            max,
            allowed,
            denied,
        }
    }
}

/// `value` as a bar height; a day with any request shows at least a sliver.
fn scaled(value: u64, max: u64) -> u64 {
    if value == 0 || max == 0 {
        return 0;
    }
    (value.saturating_mul(PLOT_HEIGHT) / max).max(1)
}

/// The `YYYY-MM-DD` of an RFC 3339 time.
fn day_of(rfc3339: &str) -> &str {
    rfc3339.get(..10).unwrap_or(rfc3339)
}

fn route_row(r: &RouteUsage) -> RouteRow {
    RouteRow {
        request: if r.route.is_empty() {
            format!("{} (no route)", r.method)
        } else if let Some(scopes) = r.route.strip_prefix(keyward_app::usage::OWN_ROUTE_PREFIX) {
            format!("{} keyward API ({scopes})", r.method)
        } else {
            format!("{} {}", r.method, r.route)
        },
        required: if r.required.is_empty() {
            "—".to_owned()
        } else {
            r.required.join(", ")
        },
        allowed: r.allowed,
        denied: r.denied,
        // To the second, as every other time on the console.
        last_seen: match r.last_seen.get(..19) {
            Some(s) => format!("{s}Z"),
            None => r.last_seen.clone(),
        },
    }
}

impl Advice {
    fn from_suggestion(catalog: &Catalog, s: SuggestionView) -> Self {
        let grant = |id: String| Grant {
            name: catalog
                .permission_set(&id)
                .map_or_else(|| id.clone(), |p| p.name().to_owned()),
            id,
        };
        Advice {
            verdict: s.verdict,
            used: s.used_scopes,
            unused: s.unused_grants.into_iter().map(grant).collect(),
            keep_sets: s.suggested.permission_sets.into_iter().map(grant).collect(),
            keep_scopes: s.suggested.scopes,
        }
    }
}
