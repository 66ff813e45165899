"""The report's style sheet (inlined into report.html: the page fetches nothing)."""

from __future__ import annotations

__all__ = ["CSS"]

CSS = """
:root { --ink:#1a202c; --muted:#4a5568; --line:#e2e8f0; --panel:#f7fafc; --accent:#2b6cb0; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; color:var(--ink); background:#edf2f7; }
header { background:#1a365d; color:white; padding:22px 40px; }
header h1 { margin:0; font-size:24px; font-weight:600; }
header p { margin:4px 0 0; color:#bee3f8; font-size:13px; }
main { max-width:1180px; margin:24px auto; padding:0 24px; }
section { background:white; border:1px solid var(--line); border-radius:8px; padding:18px 24px;
          margin-bottom:20px; }
h2 { margin:0 0 12px; font-size:19px; color:#1a365d; border-bottom:2px solid var(--line);
     padding-bottom:6px; }
h3 { font-size:15px; color:var(--muted); margin:18px 0 8px; }
table { border-collapse:collapse; margin:8px 0; font-size:14px; }
th, td { text-align:left; padding:6px 14px; border-bottom:1px solid var(--line); }
th { background:var(--panel); font-weight:600; }
tbody tr:nth-child(even) { background:#fbfdff; }
table.metrics td:not(:first-child) { font-variant-numeric:tabular-nums; text-align:right; }
table.metrics th:not(:first-child) { text-align:right; }
.note { color:var(--muted); font-size:13px; margin:6px 0; }
.warning { background:#fff5f5; border:1px solid #feb2b2; color:#9b2c2c; padding:10px 14px;
           border-radius:6px; font-weight:600; }
details { margin-top:10px; }
summary { cursor:pointer; color:var(--accent); }
pre { background:var(--panel); border:1px solid var(--line); padding:12px; overflow:auto;
      font-size:12.5px; max-height:420px; }
img.figure { max-width:100%; height:auto; display:block; margin:8px 0; }
.gallery { display:grid; grid-template-columns:repeat(auto-fill, minmax(280px, 1fr)); gap:14px;
           align-items:start; }
.card { margin:0; border:1px solid var(--line); border-radius:6px; overflow:hidden;
        background:var(--panel); }
.visual { min-height:220px; display:flex; align-items:center; justify-content:center;
          background:#111; }
.visual img.heatmap { display:block; max-width:none; image-rendering:pixelated; }
.placeholder { height:220px; display:flex; align-items:center; justify-content:center;
               text-align:center; padding:0 16px; color:var(--muted); font-size:13px;
               background:#edf2f7; }
.badges { display:flex; flex-wrap:wrap; gap:4px; align-items:center; margin:2px 0; }
.class { color:var(--muted); }
figcaption { padding:8px 10px; font-size:13px; }
.score { font-weight:600; font-variant-numeric:tabular-nums; }
.path { color:var(--muted); overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px;
         font-weight:600; }
.badge.normal { background:#ebf8ff; color:#2c5282; }
.badge.anomalous { background:#fff5f5; color:#c53030; }
.badge.unknown { background:#edf2f7; color:var(--muted); }
footer { text-align:center; color:var(--muted); font-size:12px; padding:8px 0 24px; }
"""
