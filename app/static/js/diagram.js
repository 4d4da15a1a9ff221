// Draws a process diagram with bpmn-js and marks current (yellow) and finished (green) nodes.
(function () {
  const el = document.getElementById("diagram");
  if (!el || !window.BpmnJS) return;
  const viewer = new window.BpmnJS({ container: el });
  fetch(el.dataset.xmlUrl, { credentials: "same-origin" })
    .then((r) => r.text())
    .then((xml) => viewer.importXML(xml))
    .then(() => {
      const canvas = viewer.get("canvas");
      const registry = viewer.get("elementRegistry");
      canvas.zoom("fit-viewport");
      const mark = (ids, cls) => (ids || []).forEach((id) => { if (registry.get(id)) canvas.addMarker(id, cls); });
      mark(JSON.parse(el.dataset.done || "[]"), "highlight-done");
      mark(JSON.parse(el.dataset.current || "[]"), "highlight-current");
      el.dataset.rendered = "true";
    })
    .catch((err) => { el.textContent = "流程图加载失败：" + err.message; el.dataset.rendered = "error"; });
})();
