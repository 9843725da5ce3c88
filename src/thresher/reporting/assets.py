"""The report's inline stylesheet and script (hand-written; no library, nothing fetched).

The script only reads and reorders the page's own table rows: example tables are filtered by a search box
(case-insensitive substring of a row's text) and sorted by clicking a column head (numerically by each
cell's ``data-v`` when every compared cell has a number, else by text). It never reads dataset text into
code or markup: rows are hidden or moved, nothing is parsed. Every rule is scoped under ``.thr`` so that
the report can sit inside a Jupyter output cell without restyling the notebook.
"""

CSS = """
.thr{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;max-width:1180px;margin:0 auto;padding:8px 16px}
.thr h1{font-size:22px;margin:8px 0 4px}.thr h2{font-size:19px;margin:28px 0 6px;border-bottom:2px solid #d7dde4;padding-bottom:3px}
.thr h3{font-size:16px;margin:18px 0 6px}.thr h4{font-size:14px;margin:14px 0 4px;color:#3a4a5a}
.thr .muted{color:#66727f}.thr .note{background:#fff7e0;border-left:3px solid #e0b000;padding:4px 8px;margin:6px 0}
.thr table{border-collapse:collapse;margin:4px 0 10px;font-size:13px}
.thr th,.thr td{border:1px solid #d7dde4;padding:3px 7px;text-align:left;vertical-align:top}
.thr th{background:#f0f3f6;font-weight:600}.thr td.n{text-align:right;font-variant-numeric:tabular-nums}
.thr table.sortable th{cursor:pointer;user-select:none}.thr table.sortable th::after{content:" \\2195";color:#9aa5b1}
.thr figure{margin:0 0 8px}.thr figcaption{font-size:12px;color:#3a4a5a}
.thr .charts{display:flex;flex-wrap:wrap;gap:10px}.thr .chart{flex:0 0 370px}
.thr svg{width:100%;height:auto;background:#fbfcfd;border:1px solid #e3e7eb}
.thr svg text{font-size:10px;fill:#3a4a5a}.thr svg .ax{stroke:#8a96a3;stroke-width:1}
.thr svg rect.all{fill:#b9c6d3}.thr svg rect.kept{fill:#2e7d32;opacity:.85}
.thr svg line.cut{stroke:#c62828;stroke-width:1.5;stroke-dasharray:4 3}.thr svg text.cut{fill:#c62828}
.thr svg .dot{fill:#7f93a8;opacity:.55}.thr svg .dot.kept{fill:#2e7d32;opacity:.9}
.thr .legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;vertical-align:middle}
.thr .examples{overflow-x:auto}.thr .examples table{width:100%}.thr .examples td.t{min-width:200px;max-width:420px;white-space:pre-wrap;word-break:break-word}
.thr details summary{cursor:pointer;color:#1f4f82}.thr input.thr-search{padding:3px 6px;width:260px;margin:4px 0}
.thr tr.kept td:first-child{border-left:3px solid #2e7d32}
.thr .grid td.n{min-width:54px}
"""

JS = """
(function (root) {
  if (!root) { return; }
  root.querySelectorAll('input.thr-search').forEach(function (box) {
    var table = box.parentNode.querySelector('table');
    var count = box.parentNode.querySelector('.thr-count');
    box.addEventListener('input', function () {
      var q = box.value.toLowerCase(), shown = 0;
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
        var hit = !q || row.textContent.toLowerCase().indexOf(q) >= 0;
        row.hidden = !hit;
        if (hit) { shown += 1; }
      });
      if (count) { count.textContent = shown + ' of ' + table.tBodies[0].rows.length + ' rows'; }
    });
  });
  function key(cell) {
    var v = cell.getAttribute('data-v');
    return v === null ? cell.textContent.trim() : v;
  }
  root.querySelectorAll('table.sortable').forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.addEventListener('click', function () {
        var i = th.cellIndex, up = th.getAttribute('data-dir') !== 'asc';
        th.setAttribute('data-dir', up ? 'asc' : 'desc');
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[i]), y = key(b.cells[i]), nx = parseFloat(x), ny = parseFloat(y);
          var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
          return up ? c : -c;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
})(document.currentScript && document.currentScript.closest('.thr'));
"""
