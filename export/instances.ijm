// Cells, not probabilities: turns this model's output into a 16-bit label image (0 = background,
// 1..N = one label per object). Written by bioimage-keras-zoo's export with the run's thresholds.
//
// Input: the active image, the model's output: 32-bit, 3 channels (or slices) in the order background,
// interior, boundary. deepImageJ runs this macro after the model; by hand: select that image and run
// this file (Plugins > Macros > Run...). Output: a new image, "<title>_labels", left active.
//
// The rule of training.targets.classes_to_instances in Python: seeds are the 4-connected regions of
// p(interior) > interior threshold; they grow into the mask (1 - p(background) > foreground threshold,
// or a seed) by a watershed that floods in decreasing p(interior), here in steps of `levelStep`; seeds
// whose object stays under the minimum size are dropped and the others grow again; objects under the
// minimum size are removed and the labels renumbered. Plain ImageJ 1.x only (no plugins); batch mode.

var interiorThreshold = ${interior_threshold};
var foregroundThreshold = ${foreground_threshold};
var minObjectSize = ${min_object_size};
// Flooding levels of p(interior). Within a level the order of skimage's watershed is lost, which moves
// some pixels where objects meet, and with them now and then a seed whose object is near the minimum
// size (kept in one, dropped in the other). Steps of 0.01 did that once in the shipped nuclei model's
// test output (10 objects against Python's 9); 0.005 matched there and on the DSB2018 images tried,
// at about twice the time of 0.01.
var levelStep = 0.005;
var nPixels = 0;

if (nImages == 0)
	exit("instances.ijm: no image open; select the model's output (3 channels: background, interior, boundary)");
if (bitDepth() != 32 || nSlices != 3)
	exit("instances.ijm: expects the model's output, a 32-bit image with 3 channels (background, interior, "
		+ "boundary); \"" + getTitle() + "\" is " + bitDepth() + "-bit with " + nSlices + " planes");

source = getImageID();
title = getTitle();
sourceSlice = getSliceNumber();
nPixels = getWidth() * getHeight();
wasBatch = is("Batch Mode");
setBatchMode(true);
scaling = call("ij.process.ImageConverter.getDoScaling");
setOption("ScaleConversions", false);

background = plane(source, 1, "ij-background");
interior = plane(source, 2, "ij-interior");
foreground = above(complement(background), foregroundThreshold, "ij-foreground");
seedMask = above(interior, interiorThreshold, "ij-seed-mask");
imageCalculator("Max", foreground, seedMask);  // the mask: foreground or seed
seeds = connectedComponents(seedMask);

labels = flood(seeds, interior, foreground);
if (minObjectSize > 0) {
	// Judge a seed by the object it grows into; the pixels of a dropped one go to its neighbours.
	sizes = labelSizes(labels);
	selectImage(seeds);
	dropped = 0;
	for (label = 1; label < sizes.length; label++) {
		if (sizes[label] > 0 && sizes[label] < minObjectSize) {
			changeValues(label, label, 0);
			dropped++;
		}
	}
	if (dropped > 0) {
		selectImage(labels);
		close();
		labels = flood(seeds, interior, foreground);
	}
}
sizes = labelSizes(labels);
selectImage(labels);
next = 0;
for (label = 1; label < sizes.length; label++) {
	if (sizes[label] == 0)
		continue;
	if (sizes[label] < minObjectSize) {
		changeValues(label, label, 0);
	} else {
		next++;
		// Labels are renumbered in increasing order, so `next` never collides with a label still to come.
		if (next != label)
			changeValues(label, label, next);
	}
}
setMinAndMax(0, maxOf(next, 1));
rename(replace(title, "[.]tiff?\\z", "") + "_labels");

closeImages(newArray(background, interior, foreground, seeds));
selectImage(source);
setSlice(sourceSlice);
setOption("ScaleConversions", scaling == "true");
selectImage(labels);
if (!wasBatch)
	setBatchMode(false);


// One plane of the stack `id` (channel or slice k), as a new 32-bit image.
function plane(id, k, name) {
	selectImage(id);
	setSlice(k);
	run("Duplicate...", "title=" + name);
	return getImageID();
}

// 1 - v, in 32-bit float like numpy's float32 arithmetic.
function complement(id) {
	selectImage(id);
	run("Multiply...", "value=-1");
	run("Add...", "value=1");
	return id;
}

// 1 where v > threshold (strictly, as in Python), else 0: a new 32-bit image.
function above(id, threshold, name) {
	selectImage(id);
	run("Duplicate...", "title=" + name);
	changeValues(NaN, NaN, 0);
	changeValues(-1e30, threshold, 0);
	changeValues(threshold, 1e30, 1);  // what is left above 0 is above the threshold
	return getImageID();
}

// Labels 1..N of the 4-connected regions of a 0/1 image (raster order), in place; returns its id.
function connectedComponents(id) {
	selectImage(id);
	run("Multiply...", "value=-1");  // -1 marks a pixel not labelled yet
	w = getWidth();
	h = getHeight();
	label = 0;
	for (y = 0; y < h; y++) {
		for (x = 0; x < w; x++) {
			if (getPixel(x, y) == -1) {
				label++;
				setColor(label);
				floodFill(x, y);  // 4-connected
			}
		}
	}
	if (label > 65535)
		exit("instances.ijm: " + label + " seeds, more than a 16-bit label image holds");
	return id;
}

// The watershed, as skimage floods it: pixels are taken in decreasing order of p(interior), and each
// one taken gives its label to the unlabelled mask pixels beside it. Here that order is followed level
// by level of p(interior), then the rest of the mask is filled. Returns a new 16-bit label image.
function flood(seeds, interior, mask) {
	selectImage(seeds);
	run("Duplicate...", "title=ij-labels");
	labels = getImageID();
	selectImage(interior);
	getStatistics(area, mean, min, highest);
	for (k = 1; 1 - k * levelStep > 0; k++) {
		if (1 - k * levelStep >= highest)
			continue;  // above every pixel: nothing is taken yet
		taken = above(interior, 1 - k * levelStep, "ij-taken");
		labels = grow(labels, taken, mask);
		selectImage(taken);
		close();
	}
	labels = grow(labels, mask, mask);
	selectImage(labels);
	run("16-bit");
	return labels;
}

// Let the labelled pixels of `taken` (0/1) pass their label to the unlabelled pixels of `mask` (0/1)
// beside them (4-neighbourhood; the largest label where two meet) until nothing changes. Returns the
// id of the grown image; the old one is closed.
function grow(labels, taken, mask) {
	selectImage(labels);
	getStatistics(area, before);
	while (true) {
		selectImage(labels);
		run("Duplicate...", "title=ij-grown");
		grown = getImageID();
		imageCalculator("Multiply", grown, taken);
		selectImage(grown);
		run("Maximum...", "radius=0.5");  // radius 0.5: the 4-neighbourhood
		imageCalculator("Multiply", grown, mask);
		imageCalculator("Transparent-zero", grown, labels);  // labelled pixels keep their label
		selectImage(grown);
		getStatistics(area, after);
		selectImage(labels);
		close();
		labels = grown;
		// Labels only grow, so an unchanged mean means no new pixel.
		if ((after - before) * nPixels < 0.5)
			return labels;
		before = after;
	}
}

// Pixel count of each label of a 16-bit label image, indexed by label.
function labelSizes(id) {
	selectImage(id);
	getHistogram(values, counts, 65536);
	return counts;
}

function closeImages(ids) {
	for (i = 0; i < ids.length; i++) {
		selectImage(ids[i]);
		close();
	}
}
