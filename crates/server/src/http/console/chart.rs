//! The key detail page's usage chart: hourly buckets from GetKeyUsage drawn
//! as a server-rendered SVG bar chart, allowed stacked under denied. Nothing
//! is said by colour alone: denied bars are hatched, every bar has a
//! `<title>` with its numbers, and the totals are printed beside the chart.

use maud::{Markup, html};

/// One hour of use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bar {
    /// Unix seconds of the hour's start.
    pub hour: i64,
    /// Requests allowed.
    pub allowed: u64,
    /// Requests denied (rate limited or otherwise).
    pub denied: u64,
}

const WIDTH: u64 = 720;
const HEIGHT: u64 = 160;
const AXIS: u64 = 18;

/// An SVG of `bars` (oldest first), titled `title`.
pub fn usage_chart(title: &str, bars: &[Bar]) -> Markup {
    let peak = bars
        .iter()
        .map(|b| b.allowed.saturating_add(b.denied))
        .max()
        .unwrap_or(0)
        .max(1);
    let allowed: u64 = bars.iter().map(|b| b.allowed).sum();
    let denied: u64 = bars.iter().map(|b| b.denied).sum();
    let count = u64::try_from(bars.len()).unwrap_or(1).max(1);
    let slot = (WIDTH / count).max(1);
    let bar_width = if slot > 2 { slot - 1 } else { slot };
    let plot = HEIGHT - AXIS;
    let scale = |n: u64| n.saturating_mul(plot) / peak;
    let label = |hour: i64| {
        chrono::DateTime::from_timestamp(hour, 0)
            .map(|t| t.format("%Y-%m-%d %H:00 UTC").to_string())
            .unwrap_or_default()
    };
    html! {
        figure.chart {
            svg role="img" aria-label=(format!("{title}: {allowed} allowed, {denied} denied"))
                viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) width="100%" preserveAspectRatio="none" {
                title { (title) }
                defs {
                    pattern id="hatch" width="4" height="4" patternUnits="userSpaceOnUse" {
                        rect width="4" height="4" fill="#b3261e" {}
                        path d="M0,4 L4,0" stroke="#ffffff" stroke-width="1" {}
                    }
                }
                line x1="0" y1=(plot) x2=(WIDTH) y2=(plot) stroke="#777" stroke-width="1" {}
                @for (i, bar) in bars.iter().enumerate() {
                    @let x = u64::try_from(i).unwrap_or(0) * slot;
                    @let a = scale(bar.allowed);
                    @let d = scale(bar.denied);
                    g.bar {
                        title { (label(bar.hour)) ": " (bar.allowed) " allowed, " (bar.denied) " denied" }
                        rect x=(x) y="0" width=(bar_width) height=(plot) fill="transparent" {}
                        @if a > 0 {
                            rect.allowed x=(x) y=(plot - a) width=(bar_width) height=(a) fill="#1f6f43" {}
                        }
                        @if d > 0 {
                            rect.denied x=(x) y=(plot - a - d) width=(bar_width) height=(d) fill="url(#hatch)" {}
                        }
                    }
                }
                @if let (Some(first), Some(last)) = (bars.first(), bars.last()) {
                    text x="0" y=(HEIGHT - 4) font-size="11" fill="#333" { (label(first.hour)) }
                    text x=(WIDTH) y=(HEIGHT - 4) font-size="11" fill="#333" text-anchor="end" { (label(last.hour)) }
                }
            }
            figcaption {
                (title) ": "
                strong { (allowed) } " allowed (solid bars), "
                strong { (denied) } " denied (hatched bars); peak " (peak) " in an hour."
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_names_every_bar_and_the_totals() {
        let bars = [
            Bar {
                hour: 0,
                allowed: 3,
                denied: 1,
            },
            Bar {
                hour: 3600,
                allowed: 0,
                denied: 0,
            },
        ];
        let svg = usage_chart("Last 24 hours", &bars).into_string();
        assert!(svg.contains("<svg"), "{svg}");
        assert!(
            svg.contains("1970-01-01 00:00 UTC: 3 allowed, 1 denied"),
            "{svg}"
        );
        assert!(svg.contains("4 allowed, 1 denied") || svg.contains("3 allowed, 1 denied"));
        assert!(svg.contains("class=\"denied\""), "{svg}");
        assert_eq!(svg.matches("class=\"bar\"").count(), 2);
        assert!(
            usage_chart("empty", &[])
                .into_string()
                .contains("0 allowed")
        );
    }
}
