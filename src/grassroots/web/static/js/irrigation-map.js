// The irrigation district map: canals coloured by level, structures by kind, fields by crop.
// Data comes from /api/v1/irrigation/network (GeoJSON). No basemap is needed (government
// intranets are offline); settings.tile_url adds one.
(function () {
  "use strict";

  var element = document.getElementById("irrigation-map");
  if (!element || typeof L === "undefined") { return; }
  var config = JSON.parse(document.getElementById("irrigation-map-config").textContent);
  var msg = config.messages;
  var CROP_COLOURS = { maize: "#eab308", spring_wheat: "#d4a373", sunflower: "#f97316",
                       alfalfa: "#65a30d" };
  var LEVEL_WEIGHTS = { main: 5, branch: 3.5, lateral: 2 };

  var map = L.map(element, { preferCanvas: true, zoomSnap: 0.5, minZoom: 8, maxZoom: 19 });
  map.setView([39.4, 106.55], 11);
  if (config.tileUrl) { L.tileLayer(config.tileUrl, { maxZoom: 19 }).addTo(map); }

  function esc(text) {
    return String(text === null || text === undefined ? "" : text).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;" }[c];
    });
  }
  function t(key) { return msg[key] || key; }
  function fmt(n) { return Number(n).toLocaleString(); }

  function canalPopup(p) {
    return "<div class='irr-popup'><h3>" + esc(p.name) + "</h3>" + esc(t("level." + p.level)) +
      "<table><tr><th>" + esc(t("length")) + "</th><td>" + esc(p.length_km) + " km</td></tr>" +
      "<tr><th>" + esc(t("capacity")) + "</th><td>" + esc(p.design_capacity_m3s) + " m³/s</td></tr>" +
      "<tr><th>" + esc(t("lining")) + "</th><td>" + esc(p.lining) + "</td></tr></table></div>";
  }

  function structurePopup(p) {
    var rows = "";
    (p.readings || []).forEach(function (r) {
      rows += "<tr><th>" + esc(r.quantity) + "</th><td>" + esc(Number(r.value).toPrecision(4)) +
        "</td><td>" + esc(r.observed_at.slice(0, 16).replace("T", " ")) + "</td></tr>";
    });
    var device = "";
    Object.keys(p.device || {}).forEach(function (key) {
      var value = p.device[key];
      if (value !== null && value !== undefined) {
        device += "<tr><th>" + esc(key) + "</th><td colspan='2'>" + esc(value) + "</td></tr>";
      }
    });
    var volume = p.last_volume_day
      ? "<tr><th>" + esc(t("last_volume")) + "</th><td colspan='2'>" + esc(p.last_volume_day) +
        ": " + esc(fmt(p.last_volume_m3)) + " m³</td></tr>" : "";
    var body = rows || device || volume ? "<table>" + rows + device + volume + "</table>"
      : "<p>" + esc(t("no_data")) + "</p>";
    var use = p.water_use ? " · " + esc(t("use." + p.water_use)) : "";
    return "<div class='irr-popup'><h3>" + esc(p.name) + "</h3>" + esc(t("kind." + p.kind)) + use +
      " · <code>" + esc(p.code) + "</code>" + body +
      "<p><a href='/irrigation/stations/" + encodeURIComponent(p.code) + "'>" +
      esc(t("station_page")) + " →</a></p></div>";
  }

  function fieldPopup(p) {
    return "<div class='irr-popup'><h3>" + esc(p.name) + "</h3><table>" +
      "<tr><th>" + esc(t("area")) + "</th><td>" + esc(fmt(p.area_mu)) + "</td></tr>" +
      "<tr><th>" + esc(t("crop." + p.crop)) + "</th><td>" + esc(p.wua) + "</td></tr></table></div>";
  }

  fetch(config.networkUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
    .then(function (response) { return response.json(); })
    .then(function (data) {
      var byLayer = { field: [], canal: [], structure: [] };
      data.features.forEach(function (f) { (byLayer[f.properties.layer] || []).push(f); });
      var fields = L.geoJSON({ type: "FeatureCollection", features: byLayer.field }, {
        style: function (f) {
          var colour = CROP_COLOURS[f.properties.crop] || "#a3a3a3";
          return { color: colour, weight: 0.6, fillColor: colour, fillOpacity: 0.35 };
        },
        pointToLayer: function (f, latlng) { return L.circleMarker(latlng, { radius: 4 }); },
        onEachFeature: function (f, layer) { layer.bindPopup(fieldPopup(f.properties)); }
      });
      var canals = L.geoJSON({ type: "FeatureCollection", features: byLayer.canal }, {
        style: function (f) {
          return { color: config.levelColours[f.properties.level] || "#1e40af",
                   weight: LEVEL_WEIGHTS[f.properties.level] || 2, opacity: 0.95 };
        },
        onEachFeature: function (f, layer) { layer.bindPopup(canalPopup(f.properties)); }
      });
      var structures = L.geoJSON({ type: "FeatureCollection", features: byLayer.structure }, {
        pointToLayer: function (f, latlng) {
          var p = f.properties;
          return L.circleMarker(latlng, {
            radius: p.kind === "pump_station" ? 9 : (p.is_turnout ? 6 : 5),
            color: "#ffffff", weight: 1.2, fillOpacity: 0.95,
            fillColor: config.kindColours[p.kind] || "#333333",
            className: "structure-marker kind-" + p.kind
          });
        },
        onEachFeature: function (f, layer) {
          layer.bindTooltip(esc(f.properties.code));
          layer.bindPopup(structurePopup(f.properties));
        }
      });
      fields.addTo(map);
      canals.addTo(map);
      structures.addTo(map);
      var overlays = {};
      overlays[t("layer_fields")] = fields;
      overlays[t("layer_canals")] = canals;
      overlays[t("layer_structures")] = structures;
      L.control.layers(null, overlays, { collapsed: false }).addTo(map);
      var bounds = canals.getBounds().extend(structures.getBounds());
      if (fields.getLayers().length) { bounds.extend(fields.getBounds()); }
      if (bounds.isValid()) { map.fitBounds(bounds, { padding: [20, 20] }); }
    });
}());
