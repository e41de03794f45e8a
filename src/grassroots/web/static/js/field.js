/* The grid worker's phone pages. ES5 only: WeChat's in-app browser on older Android phones
   runs an old engine. Every form works without this file; it only fills in the position,
   shows a category's extra questions, and stops a double tap. */
(function () {
  "use strict";

  var GEO_OPTIONS = { enableHighAccuracy: true, timeout: 15000, maximumAge: 60000 };

  function each(list, fn) {
    for (var i = 0; i < list.length; i++) { fn(list[i], i); }
  }

  function locate(done, failed) {
    if (!navigator.geolocation) { failed(); return; }
    navigator.geolocation.getCurrentPosition(function (pos) { done(pos.coords); }, failed,
      GEO_OPTIONS);
  }

  // The report form: the phone's position into the lon/lat fields (WGS-84, as the
  // browser gives it), with the manual fields left as the fallback.
  var button = document.getElementById("locate");
  if (button) {
    var status = document.getElementById("locate-status");
    var lon = document.getElementById("lon");
    var lat = document.getElementById("lat");
    var crs = document.getElementById("crs");
    var askPosition = function () {
      status.textContent = button.getAttribute("data-locating");
      locate(function (coords) {
        lon.value = coords.longitude.toFixed(6);
        lat.value = coords.latitude.toFixed(6);
        if (crs) { crs.value = "wgs84"; }
        status.textContent = button.getAttribute("data-located")
          .replace("{accuracy}", Math.round(coords.accuracy || 0));
      }, function () {
        status.textContent = button.getAttribute("data-failed");
      });
    };
    button.addEventListener("click", askPosition);
    if (!lon.value && !lat.value) { askPosition(); }
  }

  // Only the chosen category's extra questions are shown (all are shown without script).
  var category = document.getElementById("category");
  if (category) {
    var showQuestions = function () {
      each(document.querySelectorAll("fieldset.questions"), function (set) {
        set.style.display = set.getAttribute("data-category") === category.value ? "" : "none";
      });
    };
    category.addEventListener("change", showQuestions);
    showQuestions();
  }

  // Too many photos are refused by the server anyway; saying so before the upload saves data.
  function checkPhotos(form, event) {
    var max = parseInt(form.getAttribute("data-max-photos") || "0", 10);
    var input = form.querySelector("input[type=file]");
    if (max && input && input.files && input.files.length > max) {
      event.preventDefault();
      window.alert(form.getAttribute("data-too-many"));
      return false;
    }
    return true;
  }

  each(document.querySelectorAll("form.field-form, form.handle-form"), function (form) {
    form.addEventListener("submit", function (event) {
      if (!checkPhotos(form, event)) { return; }
      // A second tap would only be answered with the same incident; keep the button quiet.
      each(form.querySelectorAll("button[type=submit]"), function (b) {
        b.disabled = true;
        if (form.getAttribute("data-submitting")) {
          b.textContent = form.getAttribute("data-submitting");
        }
      });
    });
  });

  // "Arrived": send the phone's position with it when it comes quickly, else go without.
  each(document.querySelectorAll("form.with-position"), function (form) {
    form.addEventListener("submit", function (event) {
      if (form.getAttribute("data-located")) { return; }
      event.preventDefault();
      var sent = false;
      var send = function () {
        if (sent) { return; }
        sent = true;
        form.setAttribute("data-located", "1");
        form.submit();
      };
      setTimeout(send, 8000);
      locate(function (coords) {
        form.elements.lon.value = coords.longitude.toFixed(6);
        form.elements.lat.value = coords.latitude.toFixed(6);
        send();
      }, send);
    });
  });
}());
