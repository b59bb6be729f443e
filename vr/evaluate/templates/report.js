// report.html of `vr eval`: inlined into the page. Every name comes from the JSON table and reaches the
// DOM through textContent only, never as markup.
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("vr-data").textContent);
  function pixelate() {  // tiny images (digits) stay crisp when enlarged
    if (this.naturalWidth < 64 && this.naturalHeight < 64) this.classList.add("px");
  }
  function el(tag, cls, text) {
    var x = document.createElement(tag);
    if (cls) x.className = cls;
    if (text !== undefined) x.textContent = text;
    return x;
  }
  // thumbnails: stored once in the JSON, referenced by image index
  Array.prototype.forEach.call(document.querySelectorAll("img[data-t]"), function (im) {
    var u = D.thumbs[im.getAttribute("data-t")];
    if (u) { im.addEventListener("load", pixelate); im.src = u; }
  });
  // model tabs
  var tabs = document.querySelectorAll(".tabs button");
  Array.prototype.forEach.call(tabs, function (b) {
    b.addEventListener("click", function () {
      var m = b.getAttribute("data-m");
      Array.prototype.forEach.call(tabs, function (x) { x.classList.toggle("active", x === b); });
      Array.prototype.forEach.call(document.querySelectorAll("section.model"), function (s) {
        s.hidden = s.getAttribute("data-m") !== m;
      });
    });
  });
  // confusion-matrix cells list their images
  function figure(k, t, p, conf) {
    var f = el("figure", "th " + (t === p ? "ok" : "bad"));
    var name = D.images[k] || "";
    f.title = name;
    var u = D.thumbs[k];
    if (u) { var im = el("img"); im.alt = name; im.addEventListener("load", pixelate); im.src = u; f.appendChild(im); }
    else f.appendChild(el("div", "noimg", "no preview"));
    var c = el("figcaption");
    c.appendChild(el("span", "tl", t));
    c.appendChild(el("span", "arrow", "\u2192"));
    c.appendChild(el("span", "pl", p));
    c.appendChild(el("span", "cf", conf.toFixed(2)));
    f.appendChild(c);
    return f;
  }
  var pinned = {};
  function show(td) {
    var m = td.getAttribute("data-m"), i = +td.getAttribute("data-i"), j = +td.getAttribute("data-j");
    var M = D.models[m], cell = M.cells[i + "," + j];
    var panel = document.getElementById("cm-panel-" + m);
    panel.textContent = "";
    var t = M.labels[i], p = M.labels[j];
    var h = el("h4");
    h.appendChild(el("span", "", "true "));
    h.appendChild(el("b", "", t));
    h.appendChild(el("span", "", " \u2192 predicted "));
    h.appendChild(el("b", "", p));
    var n = cell ? cell[0] : 0, items = cell ? cell[1] : [];
    h.appendChild(el("span", "sub", " \u00b7 " + n + " image" + (n === 1 ? "" : "s") +
      (items.length < n ? ", " + items.length + " most confident shown" : "")));
    panel.appendChild(h);
    var figs = el("div", "figs");
    items.forEach(function (it) { figs.appendChild(figure(String(it[0]), t, p, it[1])); });
    panel.appendChild(figs);
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.cm td.c"), function (td) {
    var m = td.getAttribute("data-m");
    td.addEventListener("mouseenter", function () { if (!pinned[m]) show(td); });
    td.addEventListener("focus", function () { if (!pinned[m]) show(td); });
    td.addEventListener("click", function () {
      if (pinned[m]) pinned[m].classList.remove("sel");
      pinned[m] = td;
      td.classList.add("sel");
      show(td);
      var panel = document.getElementById("cm-panel-" + m), r = panel.getBoundingClientRect();
      if (r.top > window.innerHeight || r.bottom < 0) panel.scrollIntoView({block: "nearest"});
    });
  });
  // sortable tables: numbers by data-v, text in natural order; ties keep the original order
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (tb) {
    var heads = tb.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (x) { x.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var num = th.getAttribute("data-type") === "num";
        var body = tb.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = a.cells[col], y = b.cells[col], r;
          if (num) r = parseFloat(x.getAttribute("data-v")) - parseFloat(y.getAttribute("data-v"));
          else r = x.textContent.localeCompare(y.textContent, undefined, {numeric: true});
          if (!asc) r = -r;
          return r || (+a.getAttribute("data-i") - +b.getAttribute("data-i"));
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
