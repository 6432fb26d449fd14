// One canvas heatmap for every matrix on the page: values in [lo, hi] to a white-to-blue
// (or, diverging, red-white-blue) scale, one pixel block per cell, so a 1,024 x 1,024
// matrix is one canvas, not a million DOM nodes. cell(i, j) is null for masked cells.

export function heatmap({ rows, cols, cell, size = 4, lo = 0, hi = 1, diverging = false, onPick }) {
  const canvas = document.createElement("canvas");
  canvas.width = cols * size;
  canvas.height = rows * size;
  const g = canvas.getContext("2d");
  const image = g.createImageData(canvas.width, canvas.height);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const [r, gr, b] = colour(cell(i, j), lo, hi, diverging);
      for (let y = 0; y < size; y++) {
        let o = ((i * size + y) * canvas.width + j * size) * 4;
        for (let x = 0; x < size; x++, o += 4) {
          image.data[o] = r; image.data[o + 1] = gr; image.data[o + 2] = b; image.data[o + 3] = 255;
        }
      }
    }
  }
  g.putImageData(image, 0, 0);
  if (onPick) {
    canvas.addEventListener("click", (e) => {
      const box = canvas.getBoundingClientRect();
      const j = Math.floor(((e.clientX - box.left) / box.width) * cols);
      const i = Math.floor(((e.clientY - box.top) / box.height) * rows);
      if (i >= 0 && i < rows && j >= 0 && j < cols) onPick(i, j);
    });
  }
  return canvas;
}

export function colour(v, lo, hi, diverging) {
  if (v === null || v === undefined) return [238, 239, 242];   // masked / no value
  if (diverging) {
    const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
    const t = Math.max(-1, Math.min(1, v / m));
    return t >= 0 ? mix([255, 255, 255], [33, 87, 197], t) : mix([255, 255, 255], [200, 50, 40], -t);
  }
  const t = hi > lo ? Math.max(0, Math.min(1, (v - lo) / (hi - lo))) : 0;
  return mix([255, 255, 255], [20, 60, 160], Math.sqrt(t));
}

function mix(a, b, t) { return a.map((x, k) => Math.round(x + (b[k] - x) * t)); }
