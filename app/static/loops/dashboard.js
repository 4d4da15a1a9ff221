/* 闭环看板: draws every [data-chart] with ECharts (served from node_modules) and opens the orders behind a
 * clicked bar or point (each data point carries its drill-down URL). */
(function () {
  "use strict";
  if (typeof echarts === "undefined") { return; }
  var COLORS = ["#1f6feb", "#1a8f4c", "#d63c3c", "#c98a00", "#7a4fd0", "#0e9aa7"];
  var charts = {};

  function pct(v) { return v === null || v === undefined ? "—" : (v * 100).toFixed(1) + "%"; }

  function build(el) {
    var spec = JSON.parse(el.getAttribute("data-chart"));
    var percent = !!spec.percent;
    var isLine = spec.kind === "line";
    var series = spec.series.map(function (s, i) {
      return {
        name: s.name, type: isLine ? "line" : "bar", stack: s.stack || undefined, smooth: isLine,
        barMaxWidth: 36, connectNulls: true, itemStyle: { color: COLORS[i % COLORS.length] },
        data: s.data.map(function (v, j) {
          return { value: v === null ? null : (percent ? Math.round(v * 1000) / 10 : v), url: (s.urls || [])[j] };
        })
      };
    });
    var chart = echarts.init(el, null, { renderer: "canvas" });
    chart.setOption({
      animation: false,
      color: COLORS,
      tooltip: {
        trigger: "axis", axisPointer: { type: "shadow" },
        valueFormatter: function (v) {
          if (v === null || v === undefined) { return "—"; }
          return percent ? v + "%" : v + (spec.unit ? " " + spec.unit : "");
        }
      },
      legend: { top: 0, show: series.length > 1 },
      grid: { left: 48, right: 16, top: series.length > 1 ? 30 : 14, bottom: 60 },
      xAxis: { type: "category", data: spec.categories, axisLabel: { interval: 0, rotate: spec.categories.length > 6 ? 30 : 0 } },
      yAxis: { type: "value", max: percent && spec.series.some(function (s) { return s.stack; }) ? 100 : null,
               axisLabel: { formatter: percent ? "{value}%" : "{value}" }, name: spec.unit || "" },
      series: series
    });
    chart.on("click", function (params) {
      var url = params.data && params.data.url;
      if (url) { window.location.href = url; }
    });
    charts[el.id] = chart;
    el.setAttribute("data-rendered", "1");
    return chart;
  }

  function init() {
    document.querySelectorAll("[data-chart]").forEach(function (el) {
      if (!el.classList.contains("hidden")) { build(el); }
    });
    document.querySelectorAll(".dash-chart-switch").forEach(function (sel) {
      sel.addEventListener("change", function () {
        var panel = sel.closest(".dash-panel");
        panel.querySelectorAll("[data-chart]").forEach(function (el) {
          var show = el.id === sel.value;
          el.classList.toggle("hidden", !show);
          if (show) { (charts[el.id] || build(el)).resize(); }
        });
      });
    });
    window.addEventListener("resize", function () {
      Object.keys(charts).forEach(function (k) { charts[k].resize(); });
    });
  }

  window.medloopDashboard = { charts: charts, pct: pct };
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
