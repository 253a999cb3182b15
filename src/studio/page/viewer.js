// The 3D viewer: three.js from the vendored npm package (served by the
// studio under /vendor/three), GLTFLoader for the job's GLB, OrbitControls.
import * as THREE from '/vendor/three/build/three.module.js';
import { GLTFLoader } from '/vendor/three/examples/jsm/loaders/GLTFLoader.js';
import { OrbitControls } from '/vendor/three/examples/jsm/controls/OrbitControls.js';

export class Viewer {
  constructor(container) {
    this.container = container;
    // preserveDrawingBuffer: screenshots (and the browser test) see the last frame.
    this.renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
    this.renderer.setPixelRatio(window.devicePixelRatio || 1);
    this.renderer.setClearColor(0x20242c);
    container.append(this.renderer.domElement);
    this.scene = new THREE.Scene();
    this.camera = new THREE.PerspectiveCamera(40, 1, 0.001, 1000);
    this.scene.add(new THREE.HemisphereLight(0xffffff, 0x404850, 2.2));
    const sun = new THREE.DirectionalLight(0xffffff, 2.0);
    sun.position.set(1, 2, 3);
    this.camera.add(sun);
    this.scene.add(this.camera);
    this.controls = new OrbitControls(this.camera, this.renderer.domElement);
    this.controls.enableDamping = false;
    this.controls.addEventListener('change', () => this.render());
    this.model = null;
    this.materials = [];
    new ResizeObserver(() => this.resize()).observe(container);
    this.resize();
  }

  resize() {
    const { clientWidth: w, clientHeight: h } = this.container;
    if (!w || !h) return;
    this.renderer.setSize(w, h, false);
    this.camera.aspect = w / h;
    this.camera.updateProjectionMatrix();
    this.render();
  }

  render() {
    this.renderer.render(this.scene, this.camera);
  }

  clear() {
    if (this.model) this.scene.remove(this.model);
    this.model = null;
    this.materials = [];
    this.container.dataset.triangles = '0';
    this.render();
  }

  // `current`: asked once the file is loaded; false when the page has moved
  // on to another model meanwhile, and then this one is not shown.
  async show(url, current = () => true) {
    const gltf = await new GLTFLoader().loadAsync(url);
    if (!current()) return;
    this.clear();
    this.model = gltf.scene;
    let triangles = 0;
    this.model.traverse((node) => {
      if (!node.isMesh) return;
      const g = node.geometry;
      triangles += (g.index ? g.index.count : g.attributes.position.count) / 3;
      node.material.side = THREE.DoubleSide;
      // Printed plastic, not metal: glTF's default metallic factor is 1,
      // and metal without an environment map renders black.
      if ('metalness' in node.material) {
        node.material.metalness = 0;
        node.material.roughness = 0.8;
      }
      this.materials.push({ material: node.material, map: node.material.map, vertexColors: node.material.vertexColors });
    });
    this.scene.add(this.model);
    this.reset();
    this.container.dataset.triangles = String(triangles);
    this.container.dataset.url = url;
  }

  reset() {
    if (!this.model) return;
    const box = new THREE.Box3().setFromObject(this.model);
    const centre = box.getCenter(new THREE.Vector3());
    const size = box.getSize(new THREE.Vector3()).length() || 1;
    this.camera.near = size / 100;
    this.camera.far = size * 100;
    this.camera.position.copy(centre).add(new THREE.Vector3(0.6, 0.45, 1.0).normalize().multiplyScalar(size * 1.5));
    this.camera.updateProjectionMatrix();
    this.controls.target.copy(centre);
    this.controls.update();
    this.render();
  }

  setWireframe(on) {
    for (const { material } of this.materials) material.wireframe = on;
    this.render();
  }

  setColour(on) {
    for (const m of this.materials) {
      m.material.vertexColors = on && m.vertexColors;
      m.material.map = on ? m.map : null;
      m.material.needsUpdate = true;
    }
    this.render();
  }
}
