// The console's behaviour, under a CSP that allows no inline script: event listeners
// only, DOM built with textContent (never innerHTML), nothing kept in any storage.
"use strict";

(function () {
  const localTime = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
    timeZoneName: "short",
  });

  // Times are written in UTC; the browser's local time goes beside each.
  function localize(root) {
    for (const time of root.querySelectorAll("time[data-local]")) {
      if (time.nextElementSibling && time.nextElementSibling.classList.contains("local")) continue;
      const local = document.createElement("span");
      local.className = "local";
      local.textContent = " (" + localTime.format(new Date(time.dateTime)) + " your time)";
      time.after(local);
    }
  }

  // Inference instances: what is typed becomes a chip (a hidden input and a Remove button).
  function addChips(input) {
    const list = document.getElementById("instances-chosen");
    if (!list) return;
    const present = new Set(Array.from(list.querySelectorAll("input[name=deployment]"), (i) => i.value));
    for (const id of input.value.split(/[\s,]+/)) {
      if (!id || present.has(id)) continue;
      present.add(id);
      const chip = document.createElement("li");
      chip.className = "chip";
      const label = document.createElement("span");
      label.textContent = id;
      const hidden = document.createElement("input");
      hidden.type = "hidden";
      hidden.name = "deployment";
      hidden.value = id;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.dataset.remove = "";
      remove.setAttribute("aria-label", "Remove " + id);
      remove.textContent = "×";
      chip.append(label, hidden, remove);
      list.append(chip);
    }
    input.value = "";
  }

  // A shown secret leaves the page: its value, its element, and then the page itself
  // (replaced in history, so Back cannot return to where it was shown).
  function forgetSecrets() {
    for (const field of document.querySelectorAll("[data-secret]")) field.value = "";
    for (const panel of document.querySelectorAll("[data-secret-panel]")) panel.remove();
  }

  function closeMenus(except) {
    for (const button of document.querySelectorAll("[data-menu][aria-expanded=true]")) {
      if (button === except) continue;
      button.setAttribute("aria-expanded", "false");
      document.getElementById(button.getAttribute("aria-controls")).hidden = true;
    }
  }

  function openDelete(button) {
    const dialog = document.getElementById("delete-dialog");
    const form = dialog.querySelector("[data-delete-form]");
    form.action = button.dataset.delete;
    form.elements.etag.value = button.dataset.etag;
    dialog.querySelector("[data-delete-name]").textContent = button.dataset.name;
    closeMenus(null);
    dialog.showModal();
  }

  document.addEventListener("click", (event) => {
    const target = event.target.closest("button, a");
    if (!target) { closeMenus(null); return; }
    const data = target.dataset;
    if ("menu" in data) {
      const open = target.getAttribute("aria-expanded") !== "true";
      closeMenus(target);
      target.setAttribute("aria-expanded", String(open));
      const menu = document.getElementById(target.getAttribute("aria-controls"));
      menu.hidden = !open;
      if (open) menu.querySelector("a, button:not([disabled])").focus();
    } else if ("delete" in data) {
      openDelete(target);
    } else if ("openDialog" in data) {
      document.getElementById(data.openDialog).showModal();
    } else if ("closeDialog" in data) {
      target.closest("dialog").close();
    } else if ("remove" in data) {
      const input = document.getElementById("instances");
      target.closest("li").remove();
      if (input) input.focus();
    } else if ("copy" in data) {
      const field = document.getElementById(data.copy);
      const status = target.closest("[data-secret-panel]").querySelector("[data-copy-status]");
      navigator.clipboard.writeText(field.value).then(
        () => { status.textContent = "Copied to the clipboard."; },
        () => { field.select(); status.textContent = "Copying was refused: select the key and copy it yourself."; },
      );
    } else if ("dismissSecret" in data) {
      const next = data.dismissSecret;
      forgetSecrets();
      window.location.replace(next);
    } else if (!target.closest(".menu")) {
      closeMenus(null);
    }
  });

  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      const open = document.querySelector("[data-menu][aria-expanded=true]");
      if (open) { closeMenus(null); open.focus(); }
    }
    const input = event.target;
    if (event.key === "Enter" && input.matches && input.matches("[data-chips]") && input.value.trim()) {
      event.preventDefault();
      addChips(input);
    }
  });

  document.addEventListener("change", (event) => {
    if (event.target.matches("[data-autosubmit]")) event.target.form.requestSubmit();
  });

  // Leaving Inference instances selects what was typed; but not when the focus goes to
  // a button (Create, Save): chips added then would move the button under the
  // pointer and the click would miss it. The submit below selects them instead.
  document.addEventListener("focusout", (event) => {
    const input = event.target;
    if (!input.matches || !input.matches("[data-chips]")) return;
    const next = event.relatedTarget;
    if (next && next.matches("button")) return;
    addChips(input);
  });

  document.addEventListener("input", (event) => {
    const input = event.target;
    if (input.dataset && input.dataset.picks) document.getElementById(input.dataset.picks).checked = true;
  });

  // Before a form goes, what is still typed in Inference instances becomes chips.
  document.addEventListener("submit", (event) => {
    const chips = event.target.querySelector("[data-chips]");
    if (chips && chips.value.trim()) addChips(chips);
  }, true);
  // What htmx swaps in: local times, and the focus where the answer asks for it.
  document.addEventListener("htmx:load", (event) => localize(event.detail.elt));
  document.addEventListener("htmx:afterSwap", (event) => {
    const target = event.detail.target;
    const focus = target.querySelector("[data-secret], [aria-invalid=true], [role=alert]");
    if (focus) {
      if (!focus.matches("input, select, textarea")) focus.tabIndex = -1;
      focus.focus();
    }
  });

  // Leaving the page (or its being kept for Back) takes any secret with it.
  window.addEventListener("pagehide", forgetSecrets);
  window.addEventListener("pageshow", (event) => { if (event.persisted) forgetSecrets(); });

  localize(document);
})();
