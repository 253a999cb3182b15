//! glTF 2.0 binary (GLB) export: one mesh, one primitive, one node, one scene.

use std::collections::BTreeMap;

use gltf_json as json;
use json::accessor::{ComponentType, GenericComponentType, Type};
use json::buffer::Target;
use json::validation::{Checked::Valid, USize64};

use crate::{vertex_normals, Mesh, MeshError, Texture};

const GLB_MAGIC: &[u8; 4] = b"glTF";
const GLB_VERSION: u32 = 2;
const CHUNK_JSON: u32 = 0x4E4F_534A;
const CHUNK_BIN: u32 = 0x004E_4942;

/// Serialises `mesh` as a GLB with POSITION (with min/max), NORMAL (area-weighted, unit),
/// COLOR_0 (when colours are present, clamped to [0, 1]) and u32 indices, and a matte
/// material (not metallic, fully rough; glTF's default material is metallic, which
/// viewers without an environment map show nearly black).
///
/// Errors: `bad_mesh` for a mesh without faces, an out-of-range index, a non-finite
/// position or a colour count different from the vertex count; `export_failed` if the
/// file would exceed GLB's 4 GiB limit.
pub fn to_glb(mesh: &Mesh) -> Result<Vec<u8>, MeshError> {
    glb(mesh, None)
}

/// [`to_glb`] with `texture` as the material's base colour: TEXCOORD_0 and the PNG
/// embedded in the binary chunk, sampled linearly (mipmapped) and clamped at the edges.
/// Vertex colours are left out, since glTF multiplies them with the texture.
///
/// Errors: those of [`to_glb`], and `bad_mesh` when the UV count differs from the vertex
/// count or a UV is not finite.
pub fn to_glb_textured(mesh: &Mesh, texture: &Texture) -> Result<Vec<u8>, MeshError> {
    glb(mesh, Some(texture))
}

fn glb(mesh: &Mesh, texture: Option<&Texture>) -> Result<Vec<u8>, MeshError> {
    validate(mesh)?;
    if let Some(t) = texture {
        if t.uvs.len() != mesh.positions.len() {
            return Err(MeshError::BadMesh {
                reason: format!("{} UVs for {} vertices", t.uvs.len(), mesh.positions.len()),
            });
        }
        if let Some(i) = t
            .uvs
            .iter()
            .position(|uv| uv.iter().any(|c| !c.is_finite()))
        {
            return Err(MeshError::BadMesh {
                reason: format!("UV {i} {:?} is not finite", t.uvs[i]),
            });
        }
    }
    let normals = vertex_normals(mesh);
    let colors: Option<Vec<[f32; 3]>> =
        mesh.colors.as_ref().filter(|_| texture.is_none()).map(|c| {
            // NaN fails every comparison, so map it explicitly instead of relying on clamp.
            c.iter()
                .map(|rgb| rgb.map(|v| if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) }))
                .collect()
        });

    let mut root = json::Root {
        asset: json::Asset {
            version: "2.0".into(),
            generator: Some("orfeas".into()),
            copyright: None,
            extensions: None,
            extras: Default::default(),
            min_version: None,
        },
        ..Default::default()
    };
    let mut bin: Vec<u8> = Vec::new();
    let buffer = json::Index::new(0);

    let (lo, hi) = crate::topology::bbox(mesh.positions.iter().copied()).ok_or_else(|| {
        MeshError::BadMesh {
            reason: "no finite position".into(),
        }
    })?;
    let position = push_floats(&mut root, &mut bin, buffer, &mesh.positions, Some((lo, hi)));
    let normal = push_floats(&mut root, &mut bin, buffer, &normals, None);
    let color = colors
        .as_ref()
        .map(|c| push_floats(&mut root, &mut bin, buffer, c, None));
    let uv = texture.map(|t| push_floats(&mut root, &mut bin, buffer, &t.uvs, None));

    let indices_offset = bin.len();
    for f in &mesh.indices {
        for v in f {
            bin.extend_from_slice(&v.to_le_bytes());
        }
    }
    let indices_view = root.push(json::buffer::View {
        buffer,
        byte_length: USize64::from(bin.len() - indices_offset),
        byte_offset: Some(USize64::from(indices_offset)),
        byte_stride: None,
        name: None,
        target: Some(Valid(Target::ElementArrayBuffer)),
        extensions: None,
        extras: Default::default(),
    });
    let indices = root.push(accessor(
        indices_view,
        mesh.indices.len() * 3,
        ComponentType::U32,
        Type::Scalar,
        None,
    ));

    let mut attributes = BTreeMap::new();
    attributes.insert(Valid(json::mesh::Semantic::Positions), position);
    attributes.insert(Valid(json::mesh::Semantic::Normals), normal);
    if let Some(color) = color {
        attributes.insert(Valid(json::mesh::Semantic::Colors(0)), color);
    }
    if let Some(uv) = uv {
        attributes.insert(Valid(json::mesh::Semantic::TexCoords(0)), uv);
    }
    let base_color_texture = texture.map(|t| {
        // Every view before this one holds 4-byte values, so the image starts aligned
        // and everything stays aligned without padding between views.
        let image_view = root.push(json::buffer::View {
            buffer,
            byte_length: USize64::from(t.png.len()),
            byte_offset: Some(USize64::from(bin.len())),
            byte_stride: None,
            name: None,
            target: None,
            extensions: None,
            extras: Default::default(),
        });
        bin.extend_from_slice(&t.png);
        let source = root.push(json::Image {
            buffer_view: Some(image_view),
            mime_type: Some(json::image::MimeType("image/png".into())),
            name: None,
            uri: None,
            extensions: None,
            extras: Default::default(),
        });
        let sampler = root.push(json::texture::Sampler {
            mag_filter: Some(Valid(json::texture::MagFilter::Linear)),
            min_filter: Some(Valid(json::texture::MinFilter::LinearMipmapLinear)),
            wrap_s: Valid(json::texture::WrappingMode::ClampToEdge),
            wrap_t: Valid(json::texture::WrappingMode::ClampToEdge),
            ..Default::default()
        });
        let index = root.push(json::Texture {
            name: None,
            sampler: Some(sampler),
            source,
            extensions: None,
            extras: Default::default(),
        });
        json::texture::Info {
            index,
            tex_coord: 0,
            extensions: None,
            extras: Default::default(),
        }
    });
    let material = root.push(json::Material {
        pbr_metallic_roughness: json::material::PbrMetallicRoughness {
            base_color_texture,
            metallic_factor: json::material::StrengthFactor(0.0),
            roughness_factor: json::material::StrengthFactor(1.0),
            ..Default::default()
        },
        ..Default::default()
    });
    let gltf_mesh = root.push(json::Mesh {
        extensions: None,
        extras: Default::default(),
        name: Some("orfeas".into()),
        primitives: vec![json::mesh::Primitive {
            attributes,
            extensions: None,
            extras: Default::default(),
            indices: Some(indices),
            material: Some(material),
            mode: Valid(json::mesh::Mode::Triangles),
            targets: None,
        }],
        weights: None,
    });
    let node = root.push(json::Node {
        mesh: Some(gltf_mesh),
        ..Default::default()
    });
    let scene = root.push(json::Scene {
        extensions: None,
        extras: Default::default(),
        name: None,
        nodes: vec![node],
    });
    root.scene = Some(scene);
    root.push(json::Buffer {
        byte_length: USize64::from(bin.len()),
        name: None,
        uri: None,
        extensions: None,
        extras: Default::default(),
    });

    let json_bytes = root.to_vec().map_err(|e| MeshError::ExportFailed {
        reason: format!("glTF JSON: {e}"),
    })?;
    assemble(json_bytes, bin)
}

/// Rejects what would make an invalid glTF instead of writing it.
fn validate(mesh: &Mesh) -> Result<(), MeshError> {
    crate::mesh::validate(mesh)?;
    if mesh
        .indices
        .len()
        .checked_mul(3)
        .and_then(|k| u32::try_from(k).ok())
        .is_none()
    {
        return Err(MeshError::BadMesh {
            reason: format!("{} faces exceed the glTF index count", mesh.indices.len()),
        });
    }
    Ok(())
}

/// Appends a tightly packed VEC2 or VEC3 float attribute and returns its accessor.
fn push_floats<const N: usize>(
    root: &mut json::Root,
    bin: &mut Vec<u8>,
    buffer: json::Index<json::Buffer>,
    data: &[[f32; N]],
    min_max: Option<([f32; 3], [f32; 3])>,
) -> json::Index<json::Accessor> {
    let offset = bin.len();
    for v in data {
        for c in v {
            bin.extend_from_slice(&c.to_le_bytes());
        }
    }
    let view = root.push(json::buffer::View {
        buffer,
        byte_length: USize64::from(bin.len() - offset),
        byte_offset: Some(USize64::from(offset)),
        byte_stride: None,
        name: None,
        target: Some(Valid(Target::ArrayBuffer)),
        extensions: None,
        extras: Default::default(),
    });
    let type_ = if N == 2 { Type::Vec2 } else { Type::Vec3 };
    root.push(accessor(
        view,
        data.len(),
        ComponentType::F32,
        type_,
        min_max,
    ))
}

fn accessor(
    view: json::Index<json::buffer::View>,
    count: usize,
    component: ComponentType,
    type_: Type,
    min_max: Option<([f32; 3], [f32; 3])>,
) -> json::Accessor {
    let (min, max) = match min_max {
        Some((lo, hi)) => (
            Some(json::Value::from(lo.to_vec())),
            Some(json::Value::from(hi.to_vec())),
        ),
        None => (None, None),
    };
    json::Accessor {
        buffer_view: Some(view),
        byte_offset: None,
        count: USize64::from(count),
        component_type: Valid(GenericComponentType(component)),
        extensions: None,
        extras: Default::default(),
        type_: Valid(type_),
        min,
        max,
        name: None,
        normalized: false,
        sparse: None,
    }
}

/// Frames the JSON and BIN chunks: 12-byte header, each chunk padded to 4 bytes (JSON
/// with spaces, BIN with zeros) as the GLB spec requires.
fn assemble(mut json_bytes: Vec<u8>, mut bin: Vec<u8>) -> Result<Vec<u8>, MeshError> {
    json_bytes.resize(json_bytes.len().next_multiple_of(4), b' ');
    bin.resize(bin.len().next_multiple_of(4), 0);
    let total = 12 + 8 + json_bytes.len() + 8 + bin.len();
    let too_big = || MeshError::ExportFailed {
        reason: format!("GLB of {total} bytes exceeds the 4 GiB format limit"),
    };
    let total32 = u32::try_from(total).map_err(|_| too_big())?;
    let json_len = u32::try_from(json_bytes.len()).map_err(|_| too_big())?;
    let bin_len = u32::try_from(bin.len()).map_err(|_| too_big())?;

    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(GLB_MAGIC);
    out.extend_from_slice(&GLB_VERSION.to_le_bytes());
    out.extend_from_slice(&total32.to_le_bytes());
    out.extend_from_slice(&json_len.to_le_bytes());
    out.extend_from_slice(&CHUNK_JSON.to_le_bytes());
    out.extend_from_slice(&json_bytes);
    out.extend_from_slice(&bin_len.to_le_bytes());
    out.extend_from_slice(&CHUNK_BIN.to_le_bytes());
    out.extend_from_slice(&bin);
    Ok(out)
}
