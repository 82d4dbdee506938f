// Upload forms (`data-upload`, with `{% upload_limit %}` inside): refuse a file over the
// limit before sending it, send the form by XMLHttpRequest to show upload progress, then
// show the page the server answered (its redirect target, or the form with its errors).
(() => {
  "use strict";

  function fail(box, message) {
    const error = box.querySelector(".upload-error");
    error.textContent = message;
    error.hidden = false;
    box.querySelector(".upload-progress").hidden = true;
  }

  function show(box, percent) {
    const bar = box.querySelector(".progress");
    bar.setAttribute("aria-valuenow", percent);
    box.querySelector(".upload-bar").style.width = percent + "%";
    box.querySelector(".upload-percent").textContent = percent;
    if (percent >= 100) box.querySelector(".upload-phase").textContent = box.dataset.done;
    box.dataset.events = String(Number(box.dataset.events || 0) + 1);
    box.dataset.percents = (box.dataset.percents ? box.dataset.percents + " " : "") + percent;
  }

  function answer(box, xhr) {
    if (xhr.status === 413) {
      let detail = box.dataset.tooLarge;
      try { detail = JSON.parse(xhr.responseText).detail || detail; } catch (e) { /* HTML */ }
      fail(box, detail);
      return;
    }
    // XHR followed the redirect: the response is the next page, messages included
    history.replaceState(null, "", xhr.responseURL || location.href);
    document.open();
    document.write(xhr.responseText);
    document.close();
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-upload")) return;
    const box = form.querySelector(".upload-box");
    if (!box || !window.FormData) return;  // a plain submit still works
    event.preventDefault();
    box.querySelector(".upload-error").hidden = true;
    let size = 0;
    form.querySelectorAll("input[type=file]").forEach((input) => {
      for (const file of input.files) size += file.size;
    });
    if (size > Number(box.dataset.maxBytes)) {
      fail(box, box.dataset.tooLarge);
      return;
    }
    const buttons = form.querySelectorAll("button[type=submit]");
    buttons.forEach((b) => { b.disabled = true; });
    box.querySelector(".upload-progress").hidden = false;
    box.dataset.events = "0";
    box.dataset.percents = "";
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action || location.href);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) show(box, Math.floor((100 * e.loaded) / e.total));
    });
    xhr.addEventListener("load", () => {
      buttons.forEach((b) => { b.disabled = false; });
      answer(box, xhr);
    });
    xhr.addEventListener("error", () => {
      buttons.forEach((b) => { b.disabled = false; });
      fail(box, box.dataset.failed);
    });
    xhr.send(new FormData(form));
  });
})();
