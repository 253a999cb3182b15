//! Where `generate` writes, decided and checked before any work starts: a typo in
//! `-o` should cost a second, not the minutes of a batch, and must not surface as
//! `File exists (os error 17)` after the models were made.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use orfeas_wire::v1::Format;

/// Where one image's results go.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The input image.
    pub image: PathBuf,
    /// One path per requested format.
    pub models: Vec<(Format, PathBuf)>,
    /// `NAME.report.json`.
    pub report: PathBuf,
    /// Previews are `NAME.<view>.png` beside the models: this is `NAME` with its folder.
    pub stem: PathBuf,
}

impl Plan {
    /// The preview file of `view`.
    pub fn preview(&self, view: &str) -> PathBuf {
        append(&self.stem, &format!(".{view}.png"))
    }
}

fn append(stem: &Path, suffix: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The formats to write: `--format` when given, else the `-o` file's extension, else
/// GLB and STL. A usage error names the offending value.
pub fn formats(flag: Option<&[String]>, output: Option<&Path>) -> Result<Vec<Format>, String> {
    if let Some(names) = flag {
        let mut formats = Vec::new();
        for name in names {
            let format = Format::parse(&name.to_ascii_lowercase()).ok_or_else(|| format!("unknown format {name:?} (glb, stl, obj, ply, 3mf)"))?;
            if !formats.contains(&format) {
                formats.push(format);
            }
        }
        if formats.is_empty() {
            return Err("--format names no format".into());
        }
        return Ok(formats);
    }
    match output.filter(|o| !o.is_dir()).and_then(|o| o.extension()) {
        Some(ext) => {
            let ext = ext.to_string_lossy().to_ascii_lowercase();
            Format::parse(&ext).map(|f| vec![f]).ok_or_else(|| format!("output extension {ext:?} is not one of glb, stl, obj, ply, 3mf (or pass --format)"))
        }
        None => Ok(vec![Format::Glb, Format::Stl]),
    }
}

/// Every image's output paths, checked: one output file names one image, no two
/// images write the same file, no output is an existing folder, and the folders can
/// be created and written to.
pub fn plan(output: Option<&Path>, images: &[PathBuf], formats: &[Format]) -> Result<Vec<Plan>, String> {
    let single_file = output.is_some_and(|o| o.extension().is_some() && !o.is_dir());
    if single_file && images.len() > 1 {
        return Err(format!(
            "-o {} names one file but {} images were given: pass a folder (-o models/)",
            output.unwrap().display(),
            images.len()
        ));
    }
    let mut plans = Vec::with_capacity(images.len());
    let mut taken = HashSet::new();
    for image in images {
        let stem = match output {
            Some(out) if single_file => out.with_extension(""),
            Some(dir) => dir.join(image_stem(image)),
            None => PathBuf::from(image_stem(image)),
        };
        let plan = Plan {
            image: image.clone(),
            models: formats.iter().map(|&f| (f, append(&stem, &format!(".{}", f.extension())))).collect(),
            report: append(&stem, ".report.json"),
            stem,
        };
        for path in plan.models.iter().map(|(_, p)| p).chain([&plan.report]) {
            if !taken.insert(path.clone()) {
                return Err(format!("two images would both write {}: give them different names or run them apart", path.display()));
            }
            if path.is_dir() {
                return Err(format!("output {} is an existing folder", path.display()));
            }
        }
        plans.push(plan);
    }
    let folders: HashSet<PathBuf> = plans.iter().map(|p| parent(&p.report)).collect();
    for folder in folders {
        check_folder(&folder)?;
    }
    Ok(plans)
}

fn image_stem(image: &Path) -> String {
    image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `folder` exists and is writable, or can be created: its nearest existing ancestor
/// is a folder (not a file) that is writable.
fn check_folder(folder: &Path) -> Result<(), String> {
    let mut existing = folder;
    loop {
        if existing.exists() {
            break;
        }
        existing = match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
    }
    if !existing.is_dir() {
        return Err(format!("cannot write into {}: {} is a file, not a folder", folder.display(), existing.display()));
    }
    tempfile::tempfile_in(existing).map_err(|e| format!("cannot write into {}: {e}", existing.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn paths_the_output_extension_picks_the_format() {
        assert_eq!(formats(None, Some(Path::new("x.3mf"))).unwrap(), vec![Format::ThreeMf]);
        assert_eq!(formats(None, Some(Path::new("x.STL"))).unwrap(), vec![Format::Stl]);
        assert_eq!(formats(None, None).unwrap(), vec![Format::Glb, Format::Stl]);
        assert_eq!(formats(Some(&owned(&["glb", "3mf", "glb"])), Some(Path::new("x.stl"))).unwrap(), vec![Format::Glb, Format::ThreeMf]);
        assert!(formats(None, Some(Path::new("x.fbx"))).unwrap_err().contains("\"fbx\""));
        assert!(formats(Some(&owned(&["fbx"])), None).unwrap_err().contains("fbx"));
    }

    #[test]
    fn paths_are_checked_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let images = vec![PathBuf::from("a/mug.png"), PathBuf::from("b/star.png")];
        let plans = plan(Some(dir.path()), &images, &[Format::Glb, Format::Stl]).unwrap();
        assert_eq!(plans[0].models[1].1, dir.path().join("mug.stl"));
        assert_eq!(plans[1].report, dir.path().join("star.report.json"));
        assert_eq!(plans[1].preview("front"), dir.path().join("star.front.png"));
        let one = plan(Some(&dir.path().join("out/x.3mf")), &images[..1], &[Format::ThreeMf]).unwrap();
        assert_eq!(one[0].models, vec![(Format::ThreeMf, dir.path().join("out/x.3mf"))]);

        // One file for two images, two images with one name, a file where a folder must be.
        assert!(plan(Some(&dir.path().join("x.glb")), &images, &[Format::Glb]).unwrap_err().contains("names one file"));
        let twins = vec![PathBuf::from("a/mug.png"), PathBuf::from("b/mug.jpg")];
        assert!(plan(Some(dir.path()), &twins, &[Format::Glb]).unwrap_err().contains("both write"));
        std::fs::write(dir.path().join("file"), "x").unwrap();
        let e = plan(Some(&dir.path().join("file/deeper/x.glb")), &images[..1], &[Format::Glb]).unwrap_err();
        assert!(e.contains("is a file, not a folder"), "{e}");
        std::fs::create_dir(dir.path().join("mug.glb")).unwrap();
        assert!(plan(Some(dir.path()), &images[..1], &[Format::Glb]).unwrap_err().contains("existing folder"));
    }
}
