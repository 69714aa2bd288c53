// The latent view: hovering a point shows its image.
(function () {
  "use strict";
  var img = document.getElementById("latent-thumb");
  if (!img) return;
  var caption = document.getElementById("latent-caption");
  document.querySelectorAll("svg.latent circle").forEach(function (c) {
    c.addEventListener("mouseenter", function () {
      img.src = c.getAttribute("data-thumb");
      img.hidden = false;
      caption.textContent = c.querySelector("title").textContent;
    });
  });
})();

// Review with the keyboard: j/k move, d/f/c decide (the next item follows), n edits the note.
(function () {
  "use strict";
  var table = document.querySelector("table.items");
  if (!table) return;
  var url = table.getAttribute("data-review-url");
  var rows = Array.prototype.slice.call(table.querySelectorAll("tr.item"));
  var current = 0;
  var KEYS = { d: "defect", f: "false_alarm", c: "clear" };

  function select(i) {
    if (!rows.length) return;
    current = Math.max(0, Math.min(rows.length - 1, i));
    rows.forEach(function (r, k) { r.classList.toggle("current", k === current); });
    rows[current].scrollIntoView({ block: "nearest" });
  }

  function decide(row, decision) {
    var note = row.querySelector("input.note").value;
    row.classList.add("saving");
    return fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ item: row.getAttribute("data-item"), decision: decision, note: note }),
    }).then(function (res) {
      return res.json().catch(function () { return { error: res.statusText }; }).then(function (body) {
        row.classList.remove("saving");
        if (!res.ok) { row.classList.add("failed"); row.title = body.error || res.statusText; return; }
        row.classList.remove("failed");
        row.classList.remove("unsaved");
        row.setAttribute("data-decision", decision === "clear" ? "" : decision);
        var cell = row.querySelector("td.decision");
        cell.innerHTML = decision === "clear" ? "" :
          '<span class="badge ' + decision + '">' + decision.replace("_", " ") + "</span>";
        Object.keys(body.counts).forEach(function (k) {
          var el = document.querySelector('[data-count="' + k + '"]');
          if (!el) return;
          var v = body.counts[k];
          el.textContent = v === null ? "" : (k === "precision" ? v.toFixed(2) : String(v));
        });
      });
    }).catch(function (err) {  // no answer at all (the console stopped, the network)
      row.classList.remove("saving");
      row.classList.add("failed");
      row.title = String(err);
    });
  }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var typing = e.target && e.target.tagName === "INPUT" && e.target.type === "text";
    if (typing) {
      if (e.key === "Escape" || e.key === "Enter") { e.target.blur(); e.preventDefault(); }
      return;
    }
    if (e.target && (e.target.tagName === "SELECT")) return;
    if (e.key === "j" || e.key === "ArrowDown") { select(current + 1); e.preventDefault(); }
    else if (e.key === "k" || e.key === "ArrowUp") { select(current - 1); e.preventDefault(); }
    else if (e.key === "n" && rows.length) { rows[current].querySelector("input.note").focus(); e.preventDefault(); }
    else if (KEYS[e.key] && rows.length) {
      var row = rows[current];
      decide(row, KEYS[e.key]);
      select(current + 1);
      e.preventDefault();
    }
  });

  rows.forEach(function (r, k) { r.addEventListener("click", function () { select(k); }); });

  // A note edited on a decided item is saved with its decision; on an undecided one it waits for
  // the decision (d, f or c), and the row says so until then.
  rows.forEach(function (r) {
    r.querySelector("input.note").addEventListener("change", function () {
      var decided = r.getAttribute("data-decision");
      if (decided) { decide(r, decided); } else { r.classList.add("unsaved"); }
    });
  });

  var overlay = document.getElementById("overlay");
  if (overlay) {
    overlay.checked = localStorage.getItem("anomaly-ae-overlay") === "1";
    var apply = function () {
      localStorage.setItem("anomaly-ae-overlay", overlay.checked ? "1" : "0");
      document.querySelectorAll("img.thumb").forEach(function (img) {
        var base = img.getAttribute("src").split("?")[0];
        img.setAttribute("src", overlay.checked ? base + "?overlay=1" : base);
      });
    };
    overlay.addEventListener("change", apply);
    if (overlay.checked) apply();
  }
  select(0);
})();
