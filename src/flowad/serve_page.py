"""The review page the service shows at ``/``: choose or drop images, see each one's heat map, mask, score and
verdict, and move a threshold slider to see what another threshold would flag (computed in the page from the
normalised map the API returns, 0.5 being the run's threshold)."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>flowad review</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#fafafa;color:#222}
#drop{border:2px dashed #888;padding:1.2rem;text-align:center;margin-bottom:1rem;background:#fff}
.card{display:inline-block;vertical-align:top;margin:.5rem;padding:.5rem;background:#fff;border:1px solid #ccc}
.card canvas,.card img{width:256px;height:auto;display:block}
.bad{color:#b00020;font-weight:600}.good{color:#1b7f3b;font-weight:600}.error{color:#b00020}
</style></head><body>
<h1>flowad review</h1>
<p id="model">loading the model...</p>
<div id="drop">Drop images here, or <input type="file" id="files" multiple accept="image/*"></div>
<label>API key (if the service wants one) <input id="key" type="password"></label>
<p><label>threshold (normalised; 0.5 = the run's) <input id="slider" type="range" min="0" max="1" step="0.01"
 value="0.5"> <span id="value">0.50</span></label></p>
<div id="results"></div>
<script>
const results = document.getElementById("results");
const slider = document.getElementById("slider");
const cards = [];
function headers(type) {
  const h = {"Content-Type": type || "application/octet-stream"};
  const key = document.getElementById("key").value;
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}
function pngImage(b64) {
  return new Promise(done => {
    const i = new Image(); i.onload = () => done(i); i.src = "data:image/png;base64," + b64;
  });
}
async function showModel() {
  const r = await fetch("/v1/model", {headers: headers()});
  const m = await r.json();
  const about = r.ok ? `${m.model} (${m.engine}), flowad ${m.flowad_version}` : m.error;
  document.getElementById("model").textContent = about;
}
function redraw(card) {
  const t = parseFloat(slider.value), {heat, map, canvas, verdict} = card;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(heat, 0, 0);
  const tmp = document.createElement("canvas"); tmp.width = map.width; tmp.height = map.height;
  const tctx = tmp.getContext("2d"); tctx.drawImage(map, 0, 0);
  const values = tctx.getImageData(0, 0, map.width, map.height).data;
  const out = ctx.getImageData(0, 0, canvas.width, canvas.height);
  let flagged = 0, highest = 0;
  for (let p = 0; p < values.length; p += 4) highest = Math.max(highest, values[p]);
  const anomalous = highest / 255 >= t;
  for (let p = 0; p < values.length; p += 4) {
    if (anomalous && values[p] / 255 >= t) { flagged++; out.data[p] = 255; out.data[p + 1] = 0; out.data[p + 2] = 0; }
  }
  ctx.putImageData(out, 0, 0);
  verdict.textContent = anomalous ? `anomalous at ${t.toFixed(2)} (${flagged} px)` : `good at ${t.toFixed(2)}`;
  verdict.className = anomalous ? "bad" : "good";
}
async function score(file) {
  const card = document.createElement("div"); card.className = "card"; results.appendChild(card);
  const r = await fetch("/v1/predict", {method: "POST", headers: headers(file.type), body: file});
  const body = await r.json();
  if (!r.ok) { card.innerHTML = `<b>${file.name}</b><p class="error">${body.error}</p>`; return; }
  const [heat, map] = await Promise.all([pngImage(body.heatmap_png), pngImage(body.normalised_map_png)]);
  const canvas = document.createElement("canvas"); canvas.width = heat.width; canvas.height = heat.height;
  const verdict = document.createElement("p");
  card.innerHTML = `<b class="name">${file.name}</b><p class="api" data-anomalous="${body.anomalous}">` +
    `score ${body.score.toFixed(4)} (normalised ${body.normalised_score.toFixed(3)}): ` +
    `<span class="${body.anomalous ? "bad" : "good"}">${body.anomalous ? "anomalous" : "good"}</span></p>`;
  card.appendChild(canvas); card.appendChild(verdict);
  const entry = {heat, map, canvas, verdict}; cards.push(entry); redraw(entry);
}
function take(files) { for (const f of files) score(f); }
document.getElementById("files").addEventListener("change", e => take(e.target.files));
const drop = document.getElementById("drop");
drop.addEventListener("dragover", e => e.preventDefault());
drop.addEventListener("drop", e => { e.preventDefault(); take(e.dataTransfer.files); });
slider.addEventListener("input", () => {
  document.getElementById("value").textContent = parseFloat(slider.value).toFixed(2); cards.forEach(redraw);
});
showModel();
</script></body></html>
"""
