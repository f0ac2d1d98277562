//! The evaluation's figures, drawn with plotters into an RGB buffer and written as PNG.
//!
//! Text is rendered with a subset of DejaVu Sans embedded in the binary
//! (`fonts/DejaVuSans-subset.ttf`, made by `scripts/subset-font.sh`; licence beside it), so a
//! plot looks the same on every machine and needs no system fonts.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;

use super::EvalError;
use super::report::{FamilyReport, Method, Outcome};

const FONT: &[u8] = include_bytes!("fonts/DejaVuSans-subset.ttf");
const FAMILY: &str = "sans-serif";

/// Draws the three figures of a family into `out`: `<family>_alpha.png` (error vs α for an ID
/// and an OOD regime, the chosen α's marked), `<family>_growth.png` (error of each predicted
/// frame per method, OOD regime) and `<family>_forecast.png` (truth, anchor and CCM-Prefix, last
/// frame, first channel).
pub(super) fn family_plots(report: &FamilyReport, out: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let f = report.family.name();
    let mut written = Vec::new();
    let alpha = out.join(format!("{f}_alpha.png"));
    render(&alpha, (1200, 640), |root| alpha_curves(report, root))?;
    written.push(alpha);
    let growth = out.join(format!("{f}_growth.png"));
    render(&growth, (1000, 520), |root| error_growth(report, root))?;
    written.push(growth);
    if report.snapshot.is_some() {
        let forecast = out.join(format!("{f}_forecast.png"));
        render(&forecast, (1200, 440), |root| forecast_maps(report, root))?;
        written.push(forecast);
    }
    Ok(written)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), String>;

/// Draws into a white `size` canvas and writes it to `path` as an 8-bit RGB PNG.
fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> DrawResult,
) -> Result<(), EvalError> {
    let fail = |reason: String| EvalError::Plot {
        path: path.to_path_buf(),
        reason,
    };
    register_font().map_err(fail)?;
    let mut buf = vec![255u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        draw(&root).map_err(fail)?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    let file = std::fs::File::create(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), size.0, size.1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::High);
    encoder
        .write_header()
        .and_then(|mut w| w.write_image_data(&buf))
        .map_err(|e| fail(e.to_string()))
}

fn register_font() -> Result<(), String> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok())
        .then_some(())
        .ok_or_else(|| "the embedded font could not be read".to_string())
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Each method's colour in every figure.
fn colour(m: Method) -> RGBColor {
    match m {
        Method::Anchor => RGBColor(0, 0, 0),
        Method::StaticAverage => RGBColor(140, 140, 140),
        Method::NearestEndpoint => RGBColor(230, 140, 20),
        Method::Coord => RGBColor(60, 180, 200),
        Method::Scale => RGBColor(150, 90, 200),
        Method::Calibrated => RGBColor(40, 160, 60),
        Method::Prefix => RGBColor(20, 70, 220),
        Method::RandomDirection => RGBColor(220, 40, 40),
        Method::Conditioned => RGBColor(140, 90, 40),
        Method::ConditionedPrefix => RGBColor(200, 150, 90),
        Method::Hindsight => RGBColor(210, 60, 170),
        Method::Oracle => RGBColor(120, 130, 20),
    }
}

/// `values` clipped to `[0, top]`; non-finite values go to the top.
fn clip(values: impl Iterator<Item = (f64, f64)>, top: f64) -> Vec<(f64, f64)> {
    values
        .map(|(x, y)| (x, if y.is_finite() { y.min(top) } else { top }))
        .collect()
}

/// One legend line: a line sample in `colour` (dashed when `dashed`) and the label.
struct Entry {
    label: String,
    colour: RGBColor,
    dashed: bool,
}

impl Entry {
    fn new(label: impl Into<String>, colour: RGBColor, dashed: bool) -> Self {
        Entry {
            label: label.into(),
            colour,
            dashed,
        }
    }
}

/// Draws a legend into its own area (outside the plot, so it never hides a curve), in
/// `columns` columns of 20-pixel lines.
fn legend(area: &Area<'_>, entries: &[Entry], columns: usize) -> DrawResult {
    let (w, _) = area.dim_in_pixel();
    let col_width = (w as i32 - 20) / columns.max(1) as i32;
    let rows = entries.len().div_ceil(columns.max(1));
    for (i, e) in entries.iter().enumerate() {
        let (x, y) = (
            10 + (i / rows) as i32 * col_width,
            12 + (i % rows) as i32 * 20,
        );
        let style = ShapeStyle::from(&e.colour).stroke_width(2);
        let segments: Vec<[(i32, i32); 2]> = if e.dashed {
            (0..3)
                .map(|k| [(x + 9 * k, y), (x + 9 * k + 5, y)])
                .collect()
        } else {
            vec![[(x, y), (x + 24, y)]]
        };
        for seg in segments {
            area.draw(&PathElement::new(seg.to_vec(), style))
                .map_err(err)?;
        }
        area.draw(&Text::new(e.label.clone(), (x + 32, y - 7), (FAMILY, 14)))
            .map_err(err)?;
    }
    Ok(())
}

fn alpha_curves(report: &FamilyReport, root: &Area<'_>) -> DrawResult {
    let panels = root.split_evenly((1, 2));
    for (panel, r) in panels.iter().zip([report.focus_id(), report.focus_ood()]) {
        let (plot_area, legend_area) = panel.split_vertically(470);
        let mut entries = Vec::new();
        let regime = &report.regimes[r];
        let scan = &report.scans[r];
        let mean_of = |m: Method| report.scores(m).map(|s| s[r].mean());
        let alpha_of = |m: Method| {
            report
                .scores(m)
                .map(|s| &s[r].alphas)
                .filter(|a| !a.is_empty())
                .map(|a| a.iter().sum::<f64>() / a.len() as f64)
        };
        let anchor = mean_of(Method::Anchor).unwrap_or(f64::NAN);
        let finite_max = scan
            .ccm
            .iter()
            .chain(&scan.random)
            .map(|p| p.1)
            .filter(|e| e.is_finite())
            .fold(0.0, f64::max);
        let top = finite_max.min(2.5 * anchor.max(1e-12)).max(1.2 * anchor);
        let top = if top.is_finite() && top > 0.0 {
            top
        } else {
            1.0
        };
        let (lo, hi) = (report.hindsight.lo, report.hindsight.hi);
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(
                format!(
                    "{} = {:.3e} ({}, s = {:+.2})",
                    report.parameter,
                    regime.p,
                    if regime.ood { "OOD" } else { "ID" },
                    regime.coordinate
                ),
                (FAMILY, 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(lo..hi, 0.0..top * 1.02)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("α")
            .y_desc("mean nRMSE after the prefix")
            .label_style((FAMILY, 14))
            .draw()
            .map_err(err)?;
        let line_style = |c: RGBColor, w: u32| ShapeStyle::from(&c).stroke_width(w);
        chart
            .draw_series(LineSeries::new(
                clip(scan.ccm.iter().copied(), top),
                line_style(colour(Method::Prefix), 3),
            ))
            .map_err(err)?;
        entries.push(Entry::new(
            "CCM line θ_A + s + α·d",
            colour(Method::Prefix),
            false,
        ));
        chart
            .draw_series(DashedLineSeries::new(
                clip(scan.random.iter().copied(), top),
                6,
                4,
                line_style(colour(Method::RandomDirection), 2),
            ))
            .map_err(err)?;
        entries.push(Entry::new(
            "random direction θ(0) + α·r",
            colour(Method::RandomDirection),
            true,
        ));
        if anchor.is_finite() {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(lo, anchor.min(top)), (hi, anchor.min(top))],
                    4,
                    4,
                    line_style(colour(Method::Anchor), 1),
                ))
                .map_err(err)?;
            entries.push(Entry::new(
                format!("anchor: {anchor:.3}"),
                colour(Method::Anchor),
                true,
            ));
        }
        for m in [
            Method::Prefix,
            Method::Calibrated,
            Method::Coord,
            Method::Hindsight,
        ] {
            let (Some(a), Some(e)) = (alpha_of(m), mean_of(m)) else {
                continue;
            };
            let c = colour(m);
            chart
                .draw_series(LineSeries::new(vec![(a, 0.0), (a, top)], line_style(c, 1)))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Circle::new(
                    (a, if e.is_finite() { e.min(top) } else { top }),
                    5,
                    c.filled(),
                )))
                .map_err(err)?;
            let mean = if m == Method::Prefix { " (mean)" } else { "" };
            entries.push(Entry::new(
                format!("{}: α = {a:+.2}{mean}, {}", m.label(), short(e)),
                c,
                false,
            ));
        }
        legend(&legend_area, &entries, 1)?;
    }
    Ok(())
}

fn short(e: f64) -> String {
    if e.is_finite() {
        format!("{e:.3}")
    } else {
        "diverged".into()
    }
}

fn error_growth(report: &FamilyReport, root: &Area<'_>) -> DrawResult {
    let r = report.focus_ood();
    let regime = &report.regimes[r];
    let curves: Vec<(Method, &[f64])> = report
        .rows
        .iter()
        .filter_map(|row| match &row.outcome {
            Outcome::Scored(s) => Some((row.method, s[r].per_step.as_slice())),
            Outcome::NotRun(_) => None,
        })
        .collect();
    let anchor_max = report
        .scores(Method::Anchor)
        .map_or(1.0, |s| s[r].per_step.iter().copied().fold(0.0, f64::max));
    let finite_max = curves
        .iter()
        .flat_map(|(_, c)| c.iter())
        .copied()
        .filter(|e| e.is_finite())
        .fold(0.0, f64::max);
    let top = finite_max.min(2.0 * anchor_max).max(1e-6);
    let steps = report.horizon as f64;
    let (plot_area, legend_area) = root.split_horizontally(720);
    let mut entries = Vec::new();
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(
            format!(
                "error of each predicted frame, {} = {:.3e} (OOD)",
                report.parameter, regime.p
            ),
            (FAMILY, 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5..steps + 0.5, 0.0..top * 1.02)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("predicted frame")
        .y_desc("relative L2 error of the frame")
        .label_style((FAMILY, 14))
        .draw()
        .map_err(err)?;
    let edge = report.skip as f64 + 0.5;
    chart
        .draw_series(DashedLineSeries::new(
            vec![(edge, 0.0), (edge, top)],
            4,
            4,
            ShapeStyle::from(&BLACK.mix(0.5)).stroke_width(1),
        ))
        .map_err(err)?;
    entries.push(Entry::new(
        format!("end of the K = {} prefix", report.k),
        RGBColor(128, 128, 128),
        true,
    ));
    for (m, curve) in curves {
        let c = colour(m);
        let width = if m == Method::Prefix { 3 } else { 2 };
        let points = clip(
            curve.iter().enumerate().map(|(t, e)| ((t + 1) as f64, *e)),
            top,
        );
        chart
            .draw_series(LineSeries::new(
                points,
                ShapeStyle::from(&c).stroke_width(width),
            ))
            .map_err(err)?;
        entries.push(Entry::new(m.label(), c, false));
    }
    let (_, below_title) = legend_area.split_vertically(50);
    legend(&below_title, &entries, 1)
}

fn forecast_maps(report: &FamilyReport, root: &Area<'_>) -> DrawResult {
    let Some(snap) = &report.snapshot else {
        return Ok(());
    };
    let title = format!(
        "{} = {:.3e} (OOD), trajectory {}, frame {}, first channel",
        report.parameter, snap.p, snap.trajectory, snap.frame
    );
    let prefix = format!("CCM-Prefix, α = {:+.2}", snap.prefix_alpha);
    field_maps(
        root,
        &title,
        snap.n,
        &snap.truth,
        &[("anchor", &snap.anchor), (&prefix, &snap.prefix)],
    )
}

/// Writes `<path>`: the truth and each forecast field (`n × n`, one channel) side by side as heat
/// maps on the truth's colour scale, each forecast captioned with its relative L2 error.
pub fn field_png(
    path: &Path,
    title: &str,
    n: usize,
    truth: &[f32],
    forecasts: &[(&str, &[f32])],
) -> Result<(), EvalError> {
    let width = 400 * (forecasts.len() as u32 + 1);
    render(path, (width, 440), |root| {
        field_maps(root, title, n, truth, forecasts)
    })
}

fn field_maps(
    root: &Area<'_>,
    title: &str,
    n: usize,
    truth: &[f32],
    forecasts: &[(&str, &[f32])],
) -> DrawResult {
    let (lo, hi) = truth
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let hi = if hi > lo { hi } else { lo + 1.0 };
    let rel = |field: &[f32]| {
        let num: f64 = field
            .iter()
            .zip(truth)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum();
        let den: f64 = truth.iter().map(|b| (*b as f64).powi(2)).sum();
        (num / den.max(f64::MIN_POSITIVE)).sqrt()
    };
    let (head, body) = root.split_vertically(40);
    head.titled(
        &format!("{title}; colour scale [{lo:.3}, {hi:.3}] of the truth"),
        (FAMILY, 18),
    )
    .map_err(err)?;
    let panels = body.split_evenly((1, forecasts.len() + 1));
    let fields = std::iter::once(("truth".to_string(), truth)).chain(
        forecasts
            .iter()
            .map(|(name, f)| (format!("{name} (error {:.3})", rel(f)), *f)),
    );
    for (panel, (caption, field)) in panels.iter().zip(fields) {
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, (FAMILY, 16))
            .margin(10)
            .build_cartesian_2d(0..n as i32, 0..n as i32)
            .map_err(err)?;
        chart
            .draw_series((0..n * n).map(|i| {
                let (x, y) = ((i % n) as i32, (i / n) as i32);
                let v = field[i];
                let v = if v.is_finite() { v.clamp(lo, hi) } else { hi };
                Rectangle::new(
                    [(x, y), (x + 1, y + 1)],
                    ViridisRGB::get_color_normalized(v, lo, hi).filled(),
                )
            }))
            .map_err(err)?;
    }
    Ok(())
}
