//! What `generate` tells a person about each result: three lines on the terminal, and
//! the same facts as JSON (`--json`, `NAME.report.json`) for scripts.

use std::path::PathBuf;

use orfeas_wire::v1::PrintReport;
use serde::Serialize;

/// More floating parts than this suggest the image is artwork or a pattern rather
/// than an object: `relief` makes one plate of it.
pub const MANY_PARTS: u64 = 3;

/// Weight and cost of the printed volume.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Material {
    /// g/cm³ used.
    pub density_g_cm3: f64,
    /// Price per kilogram used.
    pub price_per_kg: f64,
    /// Solid volume, cm³ (no infill model: an upper bound a slicer lowers).
    pub volume_cm3: f64,
    /// Grams at that density.
    pub grams: f64,
    /// Cost of those grams.
    pub cost: f64,
}

impl Material {
    /// The material for `report`'s volume.
    pub fn of(report: &PrintReport, density_g_cm3: f64, price_per_kg: f64) -> Self {
        let (grams, cost) = orfeas_mesh::material(report.volume_mm3, density_g_cm3, price_per_kg);
        Self { density_g_cm3, price_per_kg, volume_cm3: report.volume_mm3.max(0.0) / 1000.0, grams, cost }
    }
}

/// One image's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct ImageOutcome {
    /// The input.
    pub image: PathBuf,
    /// `completed` or `failed`.
    pub status: &'static str,
    /// The job, once submitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<uuid::Uuid>,
    /// Model files (and their parts) written.
    pub files: Vec<PathBuf>,
    /// Preview images written.
    pub previews: Vec<PathBuf>,
    /// `NAME.report.json`, when written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_file: Option<PathBuf>,
    /// The printability report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<PrintReport>,
    /// Weight and cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub material: Option<Material>,
    /// Advice beyond the report's issues.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub advice: Vec<String>,
    /// Stable code of the failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ImageOutcome {
    /// A failure before or after submission.
    pub fn failed(image: PathBuf, job_id: Option<uuid::Uuid>, code: &str, error: String) -> Self {
        Self {
            image,
            status: "failed",
            job_id,
            files: Vec::new(),
            previews: Vec::new(),
            report_file: None,
            report: None,
            material: None,
            advice: Vec::new(),
            code: Some(code.to_string()),
            error: Some(error),
        }
    }
}

/// Advice for a report: many floating parts mean the photo was not one object.
pub fn advice(report: &PrintReport, model: &str) -> Vec<String> {
    let mut advice = Vec::new();
    let floating = report.checks.as_ref().map_or(0, |c| c.floating_parts);
    if floating > MANY_PARTS && model != "relief" {
        advice.push(format!(
            "{floating} parts float apart: for flat artwork, tiles or patterns try --model relief (one plate)"
        ));
    }
    advice
}

/// The three lines shown for a completed image: what was written, size and material,
/// the verdict with the issue codes.
pub fn lines(outcome: &ImageOutcome) -> Vec<String> {
    let name = outcome.image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let Some(report) = &outcome.report else {
        return vec![format!(
            "{name}: failed ({}): {}",
            outcome.code.as_deref().unwrap_or("error"),
            outcome.error.as_deref().unwrap_or("")
        )];
    };
    let written: Vec<String> = outcome.files.iter().chain(outcome.report_file.iter()).map(|p| p.display().to_string()).collect();
    let previews = if outcome.previews.is_empty() { String::new() } else { format!(" + {} previews", outcome.previews.len()) };
    let parts = report.checks.as_ref().map_or(report.components, |c| c.parts);
    let [x, y, z] = report.bbox_mm;
    let material = outcome
        .material
        .as_ref()
        .map(|m| format!(", {:.1} cm³ ≈ {:.1} g ≈ {:.2} at {}/kg", m.volume_cm3, m.grams, m.cost, m.price_per_kg))
        .unwrap_or_default();
    let errors: Vec<&str> = report.issues.iter().filter(|i| i.severity == "error").map(|i| i.code.as_str()).collect();
    let warnings: Vec<&str> = report.issues.iter().filter(|i| i.severity != "error").map(|i| i.code.as_str()).collect();
    let verdict = if report.problems.is_empty() {
        "printable".to_string()
    } else if errors.is_empty() {
        format!("NOT printable: {}", report.problems.join("; "))
    } else {
        format!("NOT printable: {}", errors.join(", "))
    };
    let warned = if warnings.is_empty() { String::new() } else { format!("; warnings: {}", warnings.join(", ")) };
    let mut lines = vec![
        format!("{name} → {}{previews}", written.join(", ")),
        format!("  {x:.1} × {y:.1} × {z:.1} mm, {parts} part{}{material}", if parts == 1 { "" } else { "s" }),
        format!("  {verdict}{warned}"),
    ];
    lines.extend(outcome.advice.iter().map(|a| format!("  advice: {a}")));
    lines
}
