//! OBJ, PLY and 3MF writers, and the format dispatcher with scale and placement.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;

use crate::glb::to_glb_textured;
use crate::place::{linear_to_srgb, scale_for, scaled, srgb_u8, to_ground_frame, to_print_frame};
use crate::{to_glb, to_stl, vertex_normals, Mesh, MeshError, Texture};

/// One file of an export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportFile {
    /// File name, e.g. `model.obj`; files of one export refer to each other by it.
    pub name: String,
    /// The contents.
    pub bytes: Vec<u8>,
}

/// A file format [`export`] can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExportFormat {
    /// glTF 2.0 binary: Y up; with a size in metres, standing on y = 0 and centred on
    /// x = z = 0; otherwise world units and frame.
    Glb,
    /// Binary STL: Z up, resting on z = 0, centred; millimetres when a size is given.
    Stl,
    /// Wavefront OBJ with normals and `v x y z r g b` vertex colours (sRGB).
    Obj,
    /// Binary little-endian PLY with normals and uchar sRGB vertex colours.
    Ply,
    /// 3MF package, unit millimetre, Z up, resting on z = 0; colours as a colour group.
    ThreeMf,
}

impl ExportFormat {
    /// Conventional file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Glb => "glb",
            ExportFormat::Stl => "stl",
            ExportFormat::Obj => "obj",
            ExportFormat::Ply => "ply",
            ExportFormat::ThreeMf => "3mf",
        }
    }

    /// MIME type for HTTP and object stores.
    pub fn mime(self) -> &'static str {
        match self {
            ExportFormat::Glb => "model/gltf-binary",
            ExportFormat::Stl => "model/stl",
            ExportFormat::Obj => "model/obj",
            ExportFormat::Ply => "application/x-ply",
            ExportFormat::ThreeMf => "model/3mf",
        }
    }
}

/// Serialises `mesh` (world units, Y up) as `format`.
///
/// `size_mm` makes the longest side that many millimetres. Print formats (STL, 3MF) are
/// always in the print frame: world (x, y, z) → (x, −z, y), Z up, bottom centre at the
/// origin, millimetres (one world unit = 1 mm without a size). OBJ and PLY are in the
/// print frame when a size is given and in the unchanged world frame otherwise. GLB keeps
/// glTF's Y-up frame; with a size it is in metres (glTF's unit) and placed like the print
/// formats in Y-up terms: bottom centre at the origin, standing on y = 0.
///
/// Errors: `bad_mesh` for a mesh without faces, with an out-of-range index, a non-finite
/// position or a colour count different from the vertex count; `export_failed` when the
/// container cannot be written.
pub fn export(
    mesh: &Mesh,
    format: ExportFormat,
    size_mm: Option<f32>,
) -> Result<Vec<u8>, MeshError> {
    crate::mesh::validate(mesh)?;
    let framed = framed(mesh, format, size_mm);
    match format {
        ExportFormat::Glb => to_glb(&framed),
        // The STL writer rotates and places by itself.
        ExportFormat::Stl => Ok(to_stl(&framed)),
        ExportFormat::ThreeMf => to_3mf(&framed),
        ExportFormat::Obj => Ok(to_obj(&framed, None)),
        ExportFormat::Ply => Ok(to_ply(&framed)),
    }
}

/// `mesh` scaled and placed as `format` wants it (see [`export`]); STL only scaled.
fn framed(mesh: &Mesh, format: ExportFormat, size_mm: Option<f32>) -> Cow<'_, Mesh> {
    let scale = scale_for(mesh, size_mm);
    match (format, size_mm) {
        (ExportFormat::Glb, Some(_)) => Cow::Owned(to_ground_frame(mesh, scale / 1000.0)),
        (ExportFormat::Stl, _) => Cow::Owned(scaled(mesh, scale)),
        (ExportFormat::ThreeMf, _) | (ExportFormat::Obj | ExportFormat::Ply, Some(_)) => {
            Cow::Owned(to_print_frame(mesh, scale))
        }
        (ExportFormat::Glb | ExportFormat::Obj | ExportFormat::Ply, None) => Cow::Borrowed(mesh),
    }
}

/// [`export`] with an optional texture, as the files to write: `{stem}.{ext}`, and for a
/// textured OBJ also the material library `{stem}.mtl` and the image `{stem}.png` it
/// names (relative to itself, so the three must sit side by side).
///
/// GLB embeds the texture (see [`to_glb_textured`](crate::to_glb_textured)); OBJ refers
/// to it through the MTL and leaves out vertex colours; PLY and 3MF carry the mesh's
/// vertex colours instead (neither has a widely read texture form), STL no colour.
///
/// Errors: those of [`export`]; `bad_mesh` when the texture's UV count differs from the
/// vertex count; `export_failed` when a textured OBJ is asked for with a `stem` that is
/// empty or holds a path separator, whitespace or a control character (it is written
/// into the OBJ and MTL, whose readers split names at spaces).
pub fn export_files(
    mesh: &Mesh,
    format: ExportFormat,
    size_mm: Option<f32>,
    texture: Option<&Texture>,
    stem: &str,
) -> Result<Vec<ExportFile>, MeshError> {
    let plain = !stem.is_empty()
        && !stem
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_whitespace() || c.is_control());
    if format == ExportFormat::Obj && texture.is_some() && !plain {
        return Err(MeshError::ExportFailed {
            reason: format!("file stem {stem:?} must be a plain file name without spaces"),
        });
    }
    let file = |ext: &str, bytes: Vec<u8>| ExportFile {
        name: format!("{stem}.{ext}"),
        bytes,
    };
    let main = |bytes| vec![file(format.extension(), bytes)];
    match (format, texture) {
        (ExportFormat::Glb, Some(t)) => {
            crate::mesh::validate(mesh)?;
            Ok(main(to_glb_textured(&framed(mesh, format, size_mm), t)?))
        }
        (ExportFormat::Obj, Some(t)) => {
            crate::mesh::validate(mesh)?;
            if t.uvs.len() != mesh.positions.len() {
                return Err(MeshError::BadMesh {
                    reason: format!("{} UVs for {} vertices", t.uvs.len(), mesh.positions.len()),
                });
            }
            let framed = framed(mesh, format, size_mm);
            let (mtl, png) = (format!("{stem}.mtl"), format!("{stem}.png"));
            Ok(vec![
                file("obj", to_obj(&framed, Some((&t.uvs, &mtl)))),
                file("mtl", to_mtl(&png)),
                file("png", t.png.clone()),
            ])
        }
        _ => Ok(main(export(mesh, format, size_mm)?)),
    }
}

/// The material every textured OBJ uses.
const OBJ_MATERIAL: &str = "orfeas";

/// OBJ text: `v x y z [r g b]`, `vn`, and `f a//a b//b c//c` (1-based). Colours are the
/// common `v` extension (MeshLab, trimesh, Blender read it), sRGB in [0, 1].
///
/// With `uvs` (one per vertex, glTF orientation) and a material library name: `mtllib`,
/// `usemtl`, `vt u 1−v` (OBJ's v grows upward) and `f a/a/a …`, without vertex colours.
pub(crate) fn to_obj(mesh: &Mesh, textured: Option<(&[[f32; 2]], &str)>) -> Vec<u8> {
    let normals = vertex_normals(mesh);
    let mut s = String::with_capacity(mesh.positions.len() * 80 + mesh.indices.len() * 40);
    s.push_str("# orfeas OBJ\n");
    if let Some((_, mtl)) = textured {
        let _ = writeln!(s, "mtllib {mtl}");
    }
    for (i, p) in mesh.positions.iter().enumerate() {
        let _ = write!(s, "v {} {} {}", p[0], p[1], p[2]);
        let colour = mesh.colors.as_ref().and_then(|c| c.get(i));
        if let Some(c) = colour.filter(|_| textured.is_none()) {
            let c = c.map(linear_to_srgb);
            let _ = write!(s, " {:.4} {:.4} {:.4}", c[0], c[1], c[2]);
        }
        s.push('\n');
    }
    if let Some((uvs, _)) = textured {
        for uv in uvs {
            let _ = writeln!(s, "vt {} {}", uv[0], 1.0 - uv[1]);
        }
    }
    for n in &normals {
        let _ = writeln!(s, "vn {} {} {}", n[0], n[1], n[2]);
    }
    if textured.is_some() {
        let _ = writeln!(s, "usemtl {OBJ_MATERIAL}");
    }
    for f in &mesh.indices {
        let [a, b, c] = f.map(|v| v + 1);
        if textured.is_some() {
            let _ = writeln!(s, "f {a}/{a}/{a} {b}/{b}/{b} {c}/{c}/{c}");
        } else {
            let _ = writeln!(s, "f {a}//{a} {b}//{b} {c}//{c}");
        }
    }
    s.into_bytes()
}

/// The material library of a textured OBJ: a matte white material whose diffuse colour
/// is the image `png`.
fn to_mtl(png: &str) -> Vec<u8> {
    format!(
        "# orfeas MTL\nnewmtl {OBJ_MATERIAL}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {png}\n"
    )
    .into_bytes()
}

/// Binary little-endian PLY: float x y z nx ny nz [uchar red green blue] per vertex,
/// `uchar uint vertex_indices` per face.
pub(crate) fn to_ply(mesh: &Mesh) -> Vec<u8> {
    let normals = vertex_normals(mesh);
    let colors = mesh.colors.as_ref();
    let mut header = String::from("ply\nformat binary_little_endian 1.0\ncomment orfeas\n");
    let _ = writeln!(header, "element vertex {}", mesh.positions.len());
    for p in ["x", "y", "z", "nx", "ny", "nz"] {
        let _ = writeln!(header, "property float {p}");
    }
    if colors.is_some() {
        header.push_str("property uchar red\nproperty uchar green\nproperty uchar blue\n");
    }
    let _ = writeln!(header, "element face {}", mesh.indices.len());
    header.push_str("property list uchar uint vertex_indices\nend_header\n");
    let mut out = header.into_bytes();
    out.reserve(mesh.positions.len() * 27 + mesh.indices.len() * 13);
    for (i, (p, n)) in mesh.positions.iter().zip(&normals).enumerate() {
        for c in p.iter().chain(n) {
            out.extend_from_slice(&c.to_le_bytes());
        }
        if let Some(c) = colors {
            out.extend(c[i].map(srgb_u8));
        }
    }
    for f in &mesh.indices {
        out.push(3);
        for v in f {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

const CONTENT_TYPES: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">
 <Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>
 <Default Extension="model" ContentType="application/vnd.ms-package.3dmanufacturing-3dmodel+xml"/>
</Types>
"#;

const RELS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">
 <Relationship Target="/3D/3dmodel.model" Id="rel0" Type="http://schemas.microsoft.com/3dmanufacturing/2013/01/3dmodel"/>
</Relationships>
"#;

/// A 3MF package with the model part at `/3D/3dmodel.model` (the name trimesh and most
/// slicers look for), unit millimetre. Colours go into a materials-extension colour group
/// referenced per triangle corner, sRGB.
pub(crate) fn to_3mf(mesh: &Mesh) -> Result<Vec<u8>, MeshError> {
    let mut model = String::with_capacity(mesh.positions.len() * 70 + mesh.indices.len() * 60);
    model.push_str(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<model unit=\"millimeter\" xml:lang=\"en-US\" \
         xmlns=\"http://schemas.microsoft.com/3dmanufacturing/core/2015/02\" \
         xmlns:m=\"http://schemas.microsoft.com/3dmanufacturing/material/2015/02\">\n \
         <metadata name=\"Application\">orfeas</metadata>\n <resources>\n",
    );
    let colored = mesh.colors.is_some();
    if let Some(colors) = &mesh.colors {
        model.push_str("  <m:colorgroup id=\"2\">\n");
        for c in colors {
            let [r, g, b] = c.map(srgb_u8);
            let _ = writeln!(model, "   <m:color color=\"#{r:02X}{g:02X}{b:02X}\"/>");
        }
        model.push_str("  </m:colorgroup>\n");
    }
    if colored {
        model.push_str("  <object id=\"1\" type=\"model\" pid=\"2\" pindex=\"0\">\n");
    } else {
        model.push_str("  <object id=\"1\" type=\"model\">\n");
    }
    model.push_str("   <mesh>\n    <vertices>\n");
    for p in &mesh.positions {
        let _ = writeln!(
            model,
            "     <vertex x=\"{}\" y=\"{}\" z=\"{}\"/>",
            p[0], p[1], p[2]
        );
    }
    model.push_str("    </vertices>\n    <triangles>\n");
    for f in &mesh.indices {
        let [a, b, c] = *f;
        if colored {
            let _ = writeln!(
                model,
                "     <triangle v1=\"{a}\" v2=\"{b}\" v3=\"{c}\" pid=\"2\" p1=\"{a}\" p2=\"{b}\" p3=\"{c}\"/>"
            );
        } else {
            let _ = writeln!(model, "     <triangle v1=\"{a}\" v2=\"{b}\" v3=\"{c}\"/>");
        }
    }
    model.push_str(
        "    </triangles>\n   </mesh>\n  </object>\n </resources>\n <build>\n  <item objectid=\"1\"/>\n </build>\n</model>\n",
    );

    let failed = |e: &dyn std::fmt::Display| MeshError::ExportFailed {
        reason: format!("3MF zip: {e}"),
    };
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let deflate = zip::write::FileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(model.len() > u32::MAX as usize / 2);
    for (name, body) in [
        ("[Content_Types].xml", CONTENT_TYPES.as_bytes()),
        ("_rels/.rels", RELS.as_bytes()),
        ("3D/3dmodel.model", model.as_bytes()),
    ] {
        zip.start_file(name, deflate).map_err(|e| failed(&e))?;
        zip.write_all(body).map_err(|e| failed(&e))?;
    }
    Ok(zip.finish().map_err(|e| failed(&e))?.into_inner())
}
